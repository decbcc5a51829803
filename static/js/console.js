// The researcher console: a little behaviour hooked on data-* attributes (no inline scripts: strict CSP).
// htmx (vendored) does the live parts: the monitor, the bots' progress and the export jobs poll fragments.
(function () {
  "use strict";

  // A button or form with data-confirm asks first (launch, pause, close, remove a member).
  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-confirm]");
    if (button && !window.confirm(button.getAttribute("data-confirm"))) {
      event.preventDefault();
      event.stopImmediatePropagation();
    }
  }, true);

  // data-copy="<input id>": copy that input's value (the participant and pilot links).
  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy]");
    if (!button) { return; }
    var field = document.getElementById(button.getAttribute("data-copy"));
    if (!field) { return; }
    field.select();
    var done = function () {
      var label = button.textContent;
      button.textContent = "Copied";
      window.setTimeout(function () { button.textContent = label; }, 1500);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(field.value).then(done, function () { document.execCommand("copy"); done(); });
    } else {
      document.execCommand("copy");
      done();
    }
  });

  // A read-only link field selects itself on focus, for a manual copy.
  document.addEventListener("focusin", function (event) {
    if (event.target.matches && event.target.matches(".copy input[readonly]")) { event.target.select(); }
  });

  // Forms that upload or change state send once: a double click must not upload or launch twice.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (form.hasAttribute("hx-post") || form.method.toLowerCase() !== "post") { return; }
    if (form.getAttribute("data-sent")) { event.preventDefault(); return; }
    form.setAttribute("data-sent", "1");
  });
  // ... but a page the browser brings back from its history (Back) may send again.
  window.addEventListener("pageshow", function (event) {
    if (event.persisted) {
      document.querySelectorAll("form[data-sent]").forEach(function (form) { form.removeAttribute("data-sent"); });
    }
  });
})();
