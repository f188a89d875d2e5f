(function () {
  var log = document.getElementById("log");
  if (!log || ["queued", "running"].indexOf(log.dataset.status) < 0) return;
  var offset = Number(log.dataset.offset), status = log.dataset.status;
  var decoder = new TextDecoder();
  // The rules of remoteci/pages/ansi.py: SGR becomes class names from a fixed set, text only ever
  // goes in as text nodes, every other escape and control is dropped, CR overwrites the line.
  var TOKEN = /\x1b\[([0-?]*)[ -\/]*([@-~])|\x1b[\]PX^_][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[ -\/]*[0-~]|([^\x00-\x08\x0a-\x1f\x7f-\x9f]+)|(\n)|(\r)|[\x00-\x1f\x7f-\x9f]/g;
  var UNFINISHED = /^\x1b(?:\[[0-?]*[ -\/]*|[\]PX^_][^\x07\x1b]*\x1b?|[ -\/]*)$/;
  var CUBE = [0, 95, 135, 175, 215, 255];
  var ON = {1: "b", 2: "d", 3: "i", 4: "u", 9: "s", 21: "u"};
  var OFF = {22: "bd", 23: "i", 24: "u", 29: "s"};
  var style = {}, held = "", overwrite = false;
  var line = document.getElementById("logline");
  function num(v) { return /^[0-9]{1,9}$/.test(v) ? Number(v) : null; }
  function clamp(v) { return v >= 0 && v <= 255 ? v : null; }
  function byte(v) { return Math.max(0, Math.min(255, v)); }
  function rgb(i) {
    if (i >= 232) { var l = 8 + 10 * (i - 232); return [l, l, l]; }
    var n = i - 16;
    return [CUBE[Math.floor(n / 36)], CUBE[Math.floor(n / 6) % 6], CUBE[n % 6]];
  }
  function nearest(r, g, b) {
    function level(v) {
      var best = 0;
      for (var i = 1; i < 6; i++) if (Math.abs(CUBE[i] - v) < Math.abs(CUBE[best] - v)) best = i;
      return best;
    }
    function dist(i) { var c = rgb(i); return Math.pow(c[0] - r, 2) + Math.pow(c[1] - g, 2) + Math.pow(c[2] - b, 2); }
    var cube = 16 + 36 * level(r) + 6 * level(g) + level(b);
    var grey = 232 + Math.min(23, Math.max(0, Math.floor((Math.floor((r + g + b) / 3) - 3) / 10)));
    return dist(grey) < dist(cube) ? grey : cube;
  }
  function extended(p, i) {
    if (p[i].length > 1) {
      var sub = p[i].slice(1).map(function (v) { return v || 0; });
      if (sub[0] === 5 && sub.length >= 2) return [clamp(sub[1]), 1];
      if (sub[0] === 2 && sub.length >= 4) {
        var t = sub.slice(-3);
        return [nearest(byte(t[0]), byte(t[1]), byte(t[2])), 1];
      }
      return [null, 1];
    }
    var rest = p.slice(i + 1, i + 5).map(function (q) { return q[0] || 0; });
    if (rest[0] === 5 && rest.length >= 2) return [clamp(rest[1]), 3];
    if (rest[0] === 2 && rest.length >= 4) return [nearest(byte(rest[1]), byte(rest[2]), byte(rest[3])), 5];
    return [null, 1 + Math.min(rest.length, 1)];
  }
  function sgr(raw) {
    var p = raw.split(";").map(function (part) { return part.split(":").map(num); });
    for (var i = 0; i < p.length;) {
      var c = p[i][0] || 0, used = 1;
      if (c === 0) style = {};
      else if (ON[c] && !(c === 4 && p[i][1] === 0)) style[ON[c]] = true;
      else if (c === 4) style.u = false;
      else if (OFF[c]) OFF[c].split("").forEach(function (k) { style[k] = false; });
      else if ((c >= 30 && c <= 37) || (c >= 90 && c <= 97)) style.f = c < 90 ? c - 30 : c - 82;
      else if ((c >= 40 && c <= 47) || (c >= 100 && c <= 107)) style.g = c < 100 ? c - 40 : c - 92;
      else if (c === 38 || c === 48) {
        var e = extended(p, i);
        used = e[1];
        if (e[0] !== null) style[c === 38 ? "f" : "g"] = e[0];
      } else if (c === 39) style.f = null;
      else if (c === 49) style.g = null;
      i += used;
    }
  }
  function classes() {
    var names = [];
    if (style.f != null) names.push("f" + style.f);
    if (style.g != null) names.push("g" + style.g);
    "bdius".split("").forEach(function (k) { if (style[k]) names.push(k); });
    return names.join(" ");
  }
  function feed(text) {
    text = held + text;
    held = "";
    var esc = text.lastIndexOf("\x1b");
    if (esc > 0 && esc === text.length - 1) {  // maybe the first half of an OSC string's end
      var earlier = text.lastIndexOf("\x1b", esc - 1);
      if (earlier >= 0 && UNFINISHED.test(text.slice(earlier))) esc = earlier;
    }
    if (esc >= 0 && text.length - esc <= 4096 && UNFINISHED.test(text.slice(esc))) {
      held = text.slice(esc);
    } else if (text.slice(-1) === "\r") held = "\r";
    text = text.slice(0, text.length - held.length);
    TOKEN.lastIndex = 0;
    for (var m = TOKEN.exec(text); m !== null; m = TOKEN.exec(text)) {
      if (m[3] !== undefined) {
        if (overwrite) { line.textContent = ""; overwrite = false; }
        var names = classes(), node = document.createTextNode(m[3]);
        if (names) { var span = document.createElement("span"); span.className = names; span.appendChild(node); node = span; }
        line.appendChild(node);
      } else if (m[4] !== undefined) {
        line.appendChild(document.createTextNode("\n"));
        line = log.appendChild(document.createElement("span"));
        overwrite = false;
      } else if (m[5] !== undefined) overwrite = true;
      else if (m[2] === "m" && /^[0-9;:]*$/.test(m[1])) sgr(m[1]);
    }
  }
  sgr(log.dataset.sgr || "");
  function poll() {
    // location.origin, not a relative URL: a page opened as http://user:token@host/ would
    // resolve one with the credentials in it, which fetch() refuses.
    fetch(location.origin + log.dataset.src + "?offset=" + offset, {cache: "no-store"}).then(function (r) {
      if (!r.ok) throw new Error(r.status);
      var now = r.headers.get("X-Job-Status");
      offset = Number(r.headers.get("X-Log-Offset"));
      return r.arrayBuffer().then(function (body) {
        var atEnd = innerHeight + scrollY >= document.body.scrollHeight - 40;
        if (body.byteLength) feed(decoder.decode(body, {stream: true}));
        if (atEnd) scrollTo(0, document.body.scrollHeight);
        if (now !== status) { location.reload(); return; }
        setTimeout(poll, 1000);
      });
    }).catch(function () { setTimeout(poll, 5000); });
  }
  setTimeout(poll, 1000);
})();
