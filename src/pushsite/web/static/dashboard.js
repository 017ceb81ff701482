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
  // times: the browser's local time, UTC on hover ------------------------------------------
  function pad(n, width) { return String(n).padStart(width || 2, "0"); }

  function localClock(when) {
    return pad(when.getHours()) + ":" + pad(when.getMinutes()) + ":" + pad(when.getSeconds()) +
      "." + pad(when.getMilliseconds(), 3);
  }

  function showLocal(time) {
    var when = new Date(time.dateTime || time.getAttribute("datetime"));
    if (isNaN(when.getTime())) { return; }
    time.textContent = localClock(when);
    time.title = when.toISOString().replace("T", " ").replace("Z", " UTC");
  }

  function ago(seconds) {
    var limits = [[60, "s", 1], [3600, "min", 60], [86400, "h", 3600], [30 * 86400, "d", 86400]];
    for (var i = 0; i < limits.length; i++) {
      if (seconds < limits[i][0]) { return Math.floor(seconds / limits[i][2]) + " " + limits[i][1] + " ago"; }
    }
    return null;
  }

  function tickAges() {
    document.querySelectorAll("time[data-ago]").forEach(function (time) {
      var when = new Date(time.getAttribute("datetime"));
      var text = ago(Math.max((Date.now() - when.getTime()) / 1000, 0));
      if (text) { time.textContent = text; }
    });
  }

  function logLine(data) {
    var li = document.createElement("li");
    li.id = "L" + data.seq;
    li.className = "level-" + data.level;
    var time = document.createElement("time");
    var when = new Date(data.time * 1000);
    time.dateTime = when.toISOString();
    time.setAttribute("data-local", "");
    showLocal(time);
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

  // after live: "optimising", then how it ended and when (the last optimise line's time)
  var ONGOING = ["optimising", "optimising queued"]; // dashboard.py ONGOING
  var optimise = {text: null, at: null};
  function showOptimise() {
    var span = document.getElementById("optimising");
    if (!span || optimise.text === null) { return; }
    span.hidden = !optimise.text;
    span.textContent = optimise.text;
    if (optimise.text && optimise.at !== null && ONGOING.indexOf(optimise.text) === -1) {
      var time = document.createElement("time");
      time.dateTime = new Date(optimise.at * 1000).toISOString();
      showLocal(time);
      span.appendChild(document.createTextNode(" at "));
      span.appendChild(time);
    }
  }

  function followDeployment(log) {
    var source = new EventSource(log.getAttribute("data-events"));
    var filter = document.getElementById("log-filter");
    var badge = document.getElementById("status-badge");
    var last = null;
    source.addEventListener("log", function (event) {
      var data = JSON.parse(event.data);
      if (data.stage === "optimise") { optimise.at = data.time; showOptimise(); }
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
      badge = document.getElementById("status-badge");
      if (badge) { setBadge(badge, data.status); }
      setText("progress", data.finished ? "" : data.progress);
      setText("duration", data.duration || "—");
      setText("files", String(data.files));
      setText("files-read", String(data.files_read));
      setText("carried", String(data.carried));
      setText("stage", data.stage || "—");
      setText("bytes", data.bytes);
      setText("bytes-stored", data.bytes_stored);
      setText("blobs-new", String(data.blobs_new));
      setText("blobs-reused", String(data.blobs_reused));
      optimise.text = data.optimise || "";
      showOptimise();
      var error = document.getElementById("error");
      if (error && data.error) { error.textContent = data.error; error.hidden = false; }
      if (last !== null && last !== data.status) { announce("Deployment " + data.status.replace("_", " ")); }
      last = data.status;
      if (data.finished) {
        document.querySelectorAll("[data-while-running]").forEach(function (n) { n.hidden = true; });
        complete(data.status);
      }
    });
    source.addEventListener("end", function (event) {
      source.close();
      complete(JSON.parse(event.data).status);
    });
  }

  // a finished deployment's page fills in its URLs, files, changes and actions in place
  var completedFor = null;
  function complete(status) {
    if (status === completedFor) { return; }
    completedFor = status;
    fetch(window.location.pathname + window.location.search, {credentials: "same-origin"})
      .then(function (response) { return response.ok ? response.text() : Promise.reject(response.status); })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html");
        fresh.querySelectorAll("[data-complete]").forEach(function (part) {
          var here = document.getElementById(part.id);
          if (here) { here.replaceWith(document.importNode(part, true)); }
        });
        var line = fresh.querySelector(".status-line");
        var current = document.querySelector(".status-line");
        if (line && current) { current.replaceWith(document.importNode(line, true)); }
        showOptimise(); // what the stream said since is newer than what was fetched
        var note = document.getElementById("finished-note");
        if (note) { note.hidden = false; }
        tickAges();
        announce("The deployment has finished");
      })
      .catch(function () {
        var note = document.getElementById("finished-note");
        if (note) { note.hidden = false; }
      });
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
    // rolling back, promoting, deleting: the form asks first (data-confirm)
    document.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        if (!window.confirm(form.getAttribute("data-confirm"))) { event.preventDefault(); }
      });
    });
    document.querySelectorAll("button[data-copy]").forEach(function (button) {
      button.addEventListener("click", function () { copyField(button); });
    });
    document.querySelectorAll("input[data-filter]").forEach(function (input) {
      input.addEventListener("input", function () { applyFilter(input); });
    });
    document.querySelectorAll("time[data-local]").forEach(showLocal);
    tickAges();
    setInterval(tickAges, 1000);
    document.querySelectorAll("select[data-autosubmit]").forEach(function (select) {
      select.addEventListener("change", function () { select.form.submit(); });
    });
    var log = document.querySelector("[data-events]");
    if (log) { followDeployment(log); }
    var badges = document.querySelectorAll("[data-follow]");
    for (var i = 0; i < badges.length && i < MAX_BADGES; i++) { followBadge(badges[i]); }
  });
})();
