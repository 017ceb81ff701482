// pushsite dashboard: copy buttons, the live log (server-sent events), live status badges.
// Plain JavaScript, no build step; every page works without it, this only adds liveness.
"use strict";

(function () {
  var MAX_BADGES = 3; // browsers allow ~6 connections per host: leave room for navigation

  function announce(text) {
    var region = document.getElementById("announce");
    if (region) { region.textContent = text; }
  }

  function setBadge(badge, status) {
    badge.textContent = status.replace("_", " ");
    badge.className = "badge badge-" + status;
  }

  // copy buttons -------------------------------------------------------------------------
  function copyField(button) {
    var field = document.getElementById(button.getAttribute("data-copy"));
    if (!field) { return; }
    var done = function () {
      button.textContent = "Copied";
      announce("Copied to the clipboard");
      setTimeout(function () { button.textContent = "Copy"; }, 1500);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(field.value).then(done, function () {
        field.select(); document.execCommand("copy"); done();
      });
    } else {
      field.select(); document.execCommand("copy"); done();
    }
  }

  // log filter ---------------------------------------------------------------------------
  function matches(line, words) {
    var text = line.textContent.toLowerCase();
    return words.every(function (w) { return text.indexOf(w) !== -1; });
  }

  function filterWords(input) {
    return input.value.toLowerCase().split(/\s+/).filter(Boolean);
  }

  function applyFilter(input) {
    var log = document.getElementById(input.getAttribute("data-filter"));
    var words = filterWords(input);
    Array.prototype.forEach.call(log.children, function (line) {
      line.hidden = words.length > 0 && !matches(line, words);
    });
  }

  // the live log and status of one deployment -------------------------------------------
  function logLine(data) {
    var li = document.createElement("li");
    li.id = "L" + data.seq;
    li.className = "level-" + data.level;
    var time = document.createElement("time");
    var when = new Date(data.time * 1000);
    time.dateTime = when.toISOString();
    time.textContent = when.toISOString().substring(11, 23);
    li.appendChild(time);
    [["level", data.level], ["stage", data.stage], ["msg", data.message]].forEach(function (p) {
      li.appendChild(document.createTextNode(" "));
      var span = document.createElement("span");
      span.className = p[0];
      span.textContent = p[1];
      li.appendChild(span);
    });
    return li;
  }

  function setText(id, text) {
    var node = document.getElementById(id);
    if (node) { node.textContent = text; }
  }

  function followDeployment(log) {
    var source = new EventSource(log.getAttribute("data-events"));
    var filter = document.getElementById("log-filter");
    var badge = document.getElementById("status-badge");
    var last = null;
    source.addEventListener("log", function (event) {
      var data = JSON.parse(event.data);
      if (document.getElementById("L" + data.seq)) { return; }
      var nearBottom = window.innerHeight + window.scrollY >= document.body.scrollHeight - 40;
      var li = logLine(data);
      if (filter && filterWords(filter).length && !matches(li, filterWords(filter))) {
        li.hidden = true;
      }
      log.appendChild(li);
      if (nearBottom) { li.scrollIntoView({block: "nearest"}); }
    });
    source.addEventListener("status", function (event) {
      var data = JSON.parse(event.data);
      if (badge) { setBadge(badge, data.status); }
      setText("progress", data.finished ? "" : data.progress);
      setText("duration", data.duration || "—");
      setText("files", String(data.files));
      setText("bytes", data.bytes);
      setText("blobs-new", String(data.blobs_new));
      setText("blobs-reused", String(data.blobs_reused));
      var error = document.getElementById("error");
      if (error && data.error) { error.textContent = data.error; error.hidden = false; }
      if (last !== null && last !== data.status) { announce("Deployment " + data.status.replace("_", " ")); }
      last = data.status;
      if (data.finished) {
        document.querySelectorAll("[data-while-running]").forEach(function (n) { n.hidden = true; });
        var note = document.getElementById("finished-note");
        if (note) { note.hidden = false; }
      }
    });
    source.addEventListener("end", function () { source.close(); });
  }

  // status badges on list pages ----------------------------------------------------------
  function followBadge(badge) {
    var source = new EventSource(badge.getAttribute("data-follow"));
    source.addEventListener("status", function (event) {
      setBadge(badge, JSON.parse(event.data).status);
    });
    source.addEventListener("end", function () { source.close(); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("button[data-copy]").forEach(function (button) {
      button.addEventListener("click", function () { copyField(button); });
    });
    document.querySelectorAll("input[data-filter]").forEach(function (input) {
      input.addEventListener("input", function () { applyFilter(input); });
    });
    var log = document.querySelector("[data-events]");
    if (log) { followDeployment(log); }
    var badges = document.querySelectorAll("[data-follow]");
    for (var i = 0; i < badges.length && i < MAX_BADGES; i++) { followBadge(badges[i]); }
  });
})();
