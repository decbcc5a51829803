// Participant pages: record client events for the server, guard against double submits,
// hold the explanation's button until its minimum time has passed. No inline scripts (CSP).
(function () {
  "use strict";
  var started = performance.now();
  var events = { visibility_changes: 0, hidden_ms: 0, paste_count: 0, blur_count: 0 };
  var hiddenSince = null;

  document.addEventListener("visibilitychange", function () {
    events.visibility_changes += 1;
    if (document.hidden) { hiddenSince = performance.now(); }
    else if (hiddenSince !== null) { events.hidden_ms += Math.round(performance.now() - hiddenSince); hiddenSince = null; }
  });
  window.addEventListener("blur", function () { events.blur_count += 1; });
  document.addEventListener("paste", function () { events.paste_count += 1; });
  document.addEventListener("input", function () {
    if (events.first_input_ms === undefined) { events.first_input_ms = Math.round(performance.now() - started); }
  });

  // A page restored from the back/forward cache is the page as it was left: a chat without what happened
  // since, a form already sent with its buttons disabled. Ask the server for the page as it stands.
  window.addEventListener("pageshow", function (event) {
    if (event.persisted) { window.location.reload(); }
  });

  document.addEventListener("DOMContentLoaded", function () {
    var bar = document.querySelector(".progress span[data-width]");
    if (bar) { bar.style.width = bar.getAttribute("data-width") + "%"; }

    document.querySelectorAll("form[data-track]").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        if (form.getAttribute("data-sent")) { event.preventDefault(); return; }
        form.setAttribute("data-sent", "1");
        var field = form.querySelector("input[name=client_events]");
        if (field) { field.value = JSON.stringify(events); }
        // Let the clicked button's name/value travel with the form, then disable the rest.
        window.setTimeout(function () {
          form.querySelectorAll("button").forEach(function (b) { b.disabled = true; });
        }, 0);
      });
    });

    document.querySelectorAll("button[data-wait]").forEach(function (button) {
      var left = parseInt(button.getAttribute("data-wait"), 10) || 0;
      if (left <= 0) { return; }
      var label = button.textContent;
      button.disabled = true;
      var tick = function () {
        if (left <= 0) { button.disabled = false; button.textContent = label; return; }
        button.textContent = label + " (" + left + ")";
        left -= 1;
        window.setTimeout(tick, 1000);
      };
      tick();
    });
  });
})();
