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
    var choices = section.querySelector("[data-choices]");
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
      section.querySelectorAll("[data-retry-mode]").forEach(function (b) { b.disabled = ended || busy; });
      choices.querySelectorAll("button").forEach(function (b) { b.disabled = ended || busy; });
    }

    // The buttons under the explainer's latest turn (a check question's options, or "Go on"): each sends its text.
    function showChoices(list) {
      choices.textContent = "";
      (list || []).forEach(function (choice) {
        var b = document.createElement("button");
        b.type = "button";
        b.textContent = choice.label;
        b.setAttribute("data-send", choice.send);
        choices.appendChild(b);
      });
      render();
    }

    choices.addEventListener("click", function (event) {
      var b = event.target.closest("button[data-send]");
      if (!b || b.disabled) { return; }
      textarea.value = b.getAttribute("data-send");
      form.requestSubmit();
    });

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

    var thinkingBox = section.querySelector("[data-thinking]");
    var thinkingTimer = null;
    var THINKING_AFTER_S = 5;

    // While no word of the reply has come: after a few seconds, say so, with the time waited.
    function thinkingStart(waitedS) {
      thinkingStop();
      var since = Date.now() - (waitedS || 0) * 1000;
      var tick = function () {
        var seconds = Math.floor((Date.now() - since) / 1000);
        if (seconds < THINKING_AFTER_S) { return; }
        thinkingBox.textContent = msg("thinking").replace("{seconds}", String(seconds));
        thinkingBox.hidden = false;
      };
      tick();
      thinkingTimer = window.setInterval(tick, 1000);
    }

    function thinkingStop() {
      if (thinkingTimer !== null) { window.clearInterval(thinkingTimer); thinkingTimer = null; }
      thinkingBox.hidden = true;
      thinkingBox.textContent = "";
    }

    function participantItem(turnId) {
      return transcript.querySelector('li.participant[data-turn="' + turnId + '"]');
    }

    // A note with the buttons that ask for the reply again: "again" afresh, "continue" on from the kept text.
    function retryBox(host, turnId, note, keptChars) {
      if (host.querySelector(".retry")) { return; }
      var box = document.createElement("span");
      box.className = "retry";
      box.setAttribute("data-retry", "");
      var text = document.createElement("span");
      text.className = "retry-note";
      text.textContent = note;
      box.appendChild(text);
      var button = function (label, mode) {
        var b = document.createElement("button");
        b.type = "button";
        b.textContent = label;
        b.setAttribute("data-retry-mode", mode);
        b.disabled = ended || busy;
        b.addEventListener("click", function () { retry(turnId, mode, keptChars || 0); });
        box.appendChild(b);
      };
      if (keptChars !== null && keptChars !== undefined) { button(msg("continue"), "continue"); }
      button(msg("send-again"), "again");
      host.appendChild(box);
    }

    function markFailed(turnId) {
      var li = participantItem(turnId);
      if (!li) { return; }
      li.setAttribute("data-status", "failed");
      retryBox(li, turnId, msg("failed"));
    }

    // A reply that failed after some of it was shown (kept, marked cut off), or an opening that never started.
    function markReplyFailed(reply, turnId, failure) {
      var li = participantItem(turnId);
      if (li) { li.setAttribute("data-status", "failed"); }
      reply.setAttribute("data-status", "failed");
      if (failure.opening) { reply.setAttribute("data-opening", ""); }
      if (failure.cut_off) {
        reply.innerHTML = failure.html;  // sanitised on the server
        reply.setAttribute("data-cut-off", "");
        reply.setAttribute("data-kept-chars", String(failure.kept_chars || 0));
        retryBox(reply, turnId, msg("cut-off"), failure.kept_chars || 0);
      } else {
        reply.textContent = "";
        retryBox(reply, turnId, msg("no-start"));
      }
    }

    function retry(turnId, mode, keptChars) {
      if (busy) { return; }
      busy = true;
      render();
      var reply = transcript.querySelector('li.explainer[data-reply-to="' + turnId + '"]');
      var box = section.querySelector('[data-reply-to="' + turnId + '"] .retry, li.participant[data-turn="' + turnId + '"] .retry');
      if (box) { box.remove(); }
      var body = new FormData();
      body.append("mode", mode);
      var again = function () { follow(turnId, { keptChars: mode === "continue" ? keptChars : 0 }); };
      post(url("retry", turnId), body).then(again).catch(function (error) {
        // Already asked again (a second click, a lost response): the stream tells how it stands.
        if (error.data && error.data.error === "not_found") { again(); return; }
        busy = false;
        render();
        showError(error.message || msg("error"));
        if (reply && reply.hasAttribute("data-status")) {
          markReplyFailed(reply, turnId, {
            cut_off: reply.hasAttribute("data-cut-off"), opening: reply.hasAttribute("data-opening"),
            html: reply.innerHTML, kept_chars: keptChars
          });
        } else {
          markFailed(turnId);
        }
      });
    }

    function follow(turnId, options) {
      options = options || {};
      busy = true;
      render();
      var li = participantItem(turnId);
      if (li) { li.setAttribute("data-status", "pending"); }
      var reply = transcript.querySelector('li.explainer[data-reply-to="' + turnId + '"]');
      if (!reply) { reply = item("explainer"); reply.setAttribute("data-reply-to", turnId); }
      ["data-status", "data-cut-off", "data-kept-chars"].forEach(function (name) { reply.removeAttribute(name); });
      reply.textContent = "";
      // A continuation replays the kept text first: only what goes beyond it is news.
      var kept = options.keptChars || 0;
      thinkingStart(options.waitedS || 0);
      var source = new EventSource(url("events", turnId));
      var finish = function () { source.close(); thinkingStop(); busy = false; render(); };
      // Every connection (the first, or EventSource's own reconnect after a drop) replays the reply from its start.
      source.addEventListener("open", function () { reply.textContent = ""; });
      source.addEventListener("delta", function (e) {
        reply.textContent += JSON.parse(e.data).text;
        if (reply.textContent.length > kept) { thinkingStop(); }
        transcript.scrollTop = transcript.scrollHeight;
      });
      source.addEventListener("reset", function () { reply.textContent = ""; });
      source.addEventListener("retrying", function () { showError(msg("retrying")); });
      source.addEventListener("done", function (e) {
        var data = JSON.parse(e.data);
        reply.innerHTML = data.html;  // sanitised on the server
        if (li) { li.setAttribute("data-status", "answered"); }
        showError("");
        finish();
        showChoices(data.choices);
        applyUsage(data.usage);
      });
      source.addEventListener("failed", function (e) {
        var data = JSON.parse(e.data);
        showError("");
        finish();
        if (data.cut_off || data.opening) {
          markReplyFailed(reply, turnId, data);
        } else {
          reply.remove();
          markFailed(turnId);
        }
        applyUsage(data.usage);
      });
      source.addEventListener("error", function () {
        if (source.readyState !== EventSource.CLOSED) { return; }  // reconnecting on its own
        finish();  // the stream was refused: do not leave the send box locked
        if (li) { reply.remove(); markFailed(turnId); } else { markReplyFailed(reply, turnId, { opening: true }); }
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
        showChoices([]);
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

    transcript.querySelectorAll('li.explainer[data-status="failed"][data-reply-to]').forEach(function (reply) {
      var turnId = reply.getAttribute("data-reply-to");
      if (reply.hasAttribute("data-cut-off")) {
        retryBox(reply, turnId, msg("cut-off"), parseInt(reply.getAttribute("data-kept-chars"), 10) || 0);
      } else {
        retryBox(reply, turnId, msg("no-start"));
      }
    });
    transcript.querySelectorAll('li.participant[data-status="failed"]').forEach(function (li) {
      var turnId = li.getAttribute("data-turn");
      if (transcript.querySelector('li.explainer[data-reply-to="' + turnId + '"]')) { return; }  // cut off: its reply has the buttons
      markFailed(turnId);
    });
    var pending = section.getAttribute("data-pending");
    // A reload mid-stream picks the stream up again, still counting the time waited.
    if (pending) {
      follow(pending, {
        waitedS: parseInt(section.getAttribute("data-waited-s"), 10) || 0,
        keptChars: parseInt(section.getAttribute("data-kept-chars"), 10) || 0
      });
    }

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
