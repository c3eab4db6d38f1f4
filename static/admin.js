/* Admin pages: live progress of a sending campaign. The page works without this file:
   it shows the totals of when it was loaded and a link to refresh. */
(function () {
  "use strict";

  var FAST = 1000; // ms, while sending
  var SLOW = 10000; // ms, while waiting for the send time

  function start(box) {
    var url = box.getAttribute("data-progress-url");
    var bar = box.querySelector("progress");
    var hint = box.querySelector(".no-js-hint");
    if (hint) { hint.hidden = true; }

    function show(p) {
      if (bar) {
        bar.value = p.percent;
        bar.textContent = p.percent + "%";
      }
      box.querySelectorAll("[data-field]").forEach(function (el) {
        var value = p[el.getAttribute("data-field")];
        if (value === null || value === undefined) { return; }
        el.textContent = value;
        if (el.getAttribute("data-field") === "status") {
          el.textContent = p.status_label || value; // in the page's language
          el.className = "status status-" + value;
        }
      });
      box.setAttribute("data-status", p.status);
      if (p.status === "sending" || p.status === "sent" || p.status === "cancelled") {
        // Sending has begun: the edition can no longer be edited, tested or rescheduled.
        document.querySelectorAll("[data-while-editable]").forEach(function (el) { el.hidden = true; });
      }
      if (p.finished) {
        box.removeAttribute("data-live");
        document.querySelectorAll("[data-hide-when-finished]").forEach(function (el) { el.hidden = true; });
      }
    }

    function poll() {
      fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (response) {
          if (!response.ok) { throw new Error("HTTP " + response.status); }
          return response.json();
        })
        .then(function (p) {
          show(p);
          // Waiting for a send time that is still far off: look less often.
          if (!p.finished) { window.setTimeout(poll, p.seconds_to_send > 60 ? SLOW : FAST); }
        })
        .catch(function () {
          // Network hiccup or logged out: try again slowly, and show the refresh link.
          if (hint) { hint.hidden = false; }
          window.setTimeout(poll, SLOW);
        });
    }

    poll();
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-progress-url][data-live]").forEach(start);
  });
})();
