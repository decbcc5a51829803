// The chat of the explanation step: send, follow the reply live (server-sent events), send a
// failed message again. The transcript shown after a reload comes from the server.
(function () {
  "use strict";

  function csrfToken(form) {
    var field = form.querySelector("input[name=csrfmiddlewaretoken]");
    return field ? field.value : "";
  }

  function nonce() {
    var bytes = new Uint8Array(12);
    window.crypto.getRandomValues(bytes);
    return Array.prototype.map.call(bytes, function (b) { return ("0" + b.toString(16)).slice(-2); }).join("");
  }

  function start(section) {
    var form = section.querySelector("[data-chat-form]");
    var textarea = form.querySelector("textarea");
    var button = form.querySelector("[data-chat-send]");
    var transcript = section.querySelector("[data-transcript]");
    var errorBox = section.querySelector("[data-chat-error]");
    var limits = section.querySelector("[data-limits]");
    var msg = function (name) { return section.getAttribute("data-msg-" + name) || ""; };
    var url = function (name, turnId) {
      return section.getAttribute("data-" + name + "-url").replace(/\/0\/$/, "/" + turnId + "/");
    };
    var secondsLeft = section.getAttribute("data-seconds-left");
    var turnsLeft = section.getAttribute("data-turns-left");
    var ended = section.getAttribute("data-ended") === "1";
    var busy = false;

    function showError(text) {
      errorBox.textContent = text || "";
      errorBox.hidden = !text;
    }

    function render() {
      var parts = [];
      if (turnsLeft !== "" && turnsLeft !== null) { parts.push(msg("turns-left") + " " + turnsLeft); }
      if (secondsLeft !== "" && secondsLeft !== null) {
        var s = Math.max(0, parseInt(secondsLeft, 10));
        parts.push(msg("time-left") + " " + Math.floor(s / 60) + ":" + ("0" + (s % 60)).slice(-2));
      }
      limits.textContent = parts.join(" · ");
      textarea.disabled = ended;
      button.disabled = ended || busy;
    }

    function applyUsage(usage) {
      if (!usage) { return; }
      turnsLeft = usage.turns_left === null ? "" : String(usage.turns_left);
      secondsLeft = usage.seconds_left === null ? "" : String(usage.seconds_left);
      if (usage.ended) { ended = true; showError(usage.message); }
      render();
    }

    function item(author, turnId) {
      var li = document.createElement("li");
      li.className = "turn " + author;
      if (turnId) { li.setAttribute("data-turn", turnId); }
      transcript.appendChild(li);
      return li;
    }

    function markFailed(turnId) {
      var li = transcript.querySelector('li.participant[data-turn="' + turnId + '"]');
      if (!li || li.querySelector(".retry")) { return; }
      li.setAttribute("data-status", "failed");
      var note = document.createElement("span");
      note.className = "retry";
      note.textContent = msg("failed") + " ";
      var again = document.createElement("button");
      again.type = "button";
      again.textContent = msg("send-again");
      again.addEventListener("click", function () {
        note.remove();
        li.setAttribute("data-status", "pending");
        post(url("retry", turnId), new FormData(form)).then(function () { follow(turnId); })
          .catch(function () { markFailed(turnId); });
      });
      note.appendChild(again);
      li.appendChild(note);
    }

    function follow(turnId) {
      busy = true;
      render();
      var reply = transcript.querySelector('li.explainer[data-reply-to="' + turnId + '"]');
      if (!reply) { reply = item("explainer"); reply.setAttribute("data-reply-to", turnId); }
      reply.textContent = "";
      var source = new EventSource(url("events", turnId));
      var finish = function () { source.close(); busy = false; render(); };
      // Every connection (the first, or EventSource's own reconnect after a drop) replays the reply from its start.
      source.addEventListener("open", function () { reply.textContent = ""; });
      source.addEventListener("delta", function (e) { reply.textContent += JSON.parse(e.data).text; transcript.scrollTop = transcript.scrollHeight; });
      source.addEventListener("reset", function () { reply.textContent = ""; });
      source.addEventListener("retrying", function () { showError(msg("retrying")); });
      source.addEventListener("done", function (e) {
        var data = JSON.parse(e.data);
        reply.innerHTML = data.html;  // sanitised on the server
        showError("");
        finish();
        applyUsage(data.usage);
      });
      source.addEventListener("failed", function (e) {
        var data = JSON.parse(e.data);
        reply.remove();
        showError("");
        finish();
        markFailed(turnId);
        applyUsage(data.usage);
      });
    }

    function post(target, body) {
      return fetch(target, {
        method: "POST", body: body, credentials: "same-origin",
        headers: { "X-CSRFToken": csrfToken(form), "Accept": "application/json" }
      }).then(function (response) {
        return response.json().then(function (data) {
          if (!response.ok) { var error = new Error(data.message || ""); error.data = data; throw error; }
          return data;
        });
      });
    }

    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var text = textarea.value.trim();
      if (!text || busy || ended) { return; }
      form.querySelector("input[name=nonce]").value = nonce();
      busy = true;
      render();
      post(form.action, new FormData(form)).then(function (data) {
        var li = item("participant", data.turn);
        li.textContent = text;
        textarea.value = "";
        showError("");
        follow(data.turn);
      }).catch(function (error) {
        busy = false;
        showError(error.message || msg("error"));  // the text stays in the box
        if (error.data && error.data.error === "limit") { ended = true; }
        render();
      });
    });

    transcript.querySelectorAll('li.participant[data-status="failed"]').forEach(function (li) {
      markFailed(li.getAttribute("data-turn"));
    });
    var pending = section.getAttribute("data-pending");
    if (pending) { follow(pending); }  // a reload mid-stream picks the stream up again

    if (secondsLeft !== "") {
      window.setInterval(function () {
        if (secondsLeft === "" || ended) { return; }
        secondsLeft = String(Math.max(0, parseInt(secondsLeft, 10) - 1));
        if (secondsLeft === "0") { ended = true; showError(msg("time-up")); }
        render();
      }, 1000);
    }
    render();
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-chat]").forEach(start);
  });
})();
