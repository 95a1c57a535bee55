// lineq console: a little progressive enhancement. Every page works without this script.
//  - [data-confirm] forms ask before they are sent.
//  - #live[data-refresh=N] is fetched again every N seconds and swapped in place (the server
//    renders the same page; the response is parsed as an inert document, nothing in it runs),
//    while the page is visible, the "auto refresh" box is ticked and no field is being edited.
"use strict";
(function () {
  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    var question = form.getAttribute && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      ev.preventDefault();
    }
  });

  function editing() {
    var a = document.activeElement;
    return a && (a.tagName === "INPUT" || a.tagName === "SELECT" || a.tagName === "TEXTAREA") && a.id !== "auto-refresh";
  }

  function setup() {
    var live = document.getElementById("live");
    if (!live) return;
    var every = parseInt(live.getAttribute("data-refresh") || "0", 10);
    if (!(every > 0)) return;
    var box = document.getElementById("auto-refresh");
    if (box) {
      box.hidden = false;
      var holder = box.closest(".refresh");
      if (holder) holder.hidden = false;
    }
    var busy = false;
    window.setInterval(function () {
      if (busy || document.hidden || editing() || (box && !box.checked)) return;
      busy = true;
      fetch(window.location.href, { credentials: "same-origin", headers: { "X-Requested-With": "lineq-console" } })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (text) {
          if (text === null) return;
          var doc = new DOMParser().parseFromString(text, "text/html");
          var fresh = doc.getElementById("live");
          var current = document.getElementById("live");
          if (fresh && current) {
            // Keep the open/closed state of <details> the reader chose.
            var open = {};
            current.querySelectorAll("details[id]").forEach(function (d) { open[d.id] = d.open; });
            current.replaceWith(document.adoptNode(fresh));
            fresh.querySelectorAll("details[id]").forEach(function (d) { if (d.id in open) d.open = open[d.id]; });
          }
        })
        .catch(function () {})
        .then(function () { busy = false; });
    }, every * 1000);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", setup);
  } else {
    setup();
  }
})();
