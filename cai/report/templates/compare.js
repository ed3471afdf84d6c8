"use strict";
// The comparison's answer viewer. Every piece of model or prompt text is written with
// textContent, never as HTML, so text that looks like markup stays text. Word diffs come
// computed from cai (difflib), as [op, text] runs: 0 same, 1 added, -1 removed.
(function () {
  var D = JSON.parse(document.getElementById("viewer-data").textContent);
  var N = D.names, P = D.prompts, PAGE = D.page_size || 20;
  var shown = [], page = 0, hay = null;

  function $(id) { return document.getElementById(id); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }
  function pct(x) { return (100 * x).toFixed(0) + "%"; }

  function text(p) {
    var parts = [p.id];
    p.prompt.forEach(function (m) { parts.push(m[1]); });
    p.answers.forEach(function (a) { if (a) parts.push(a); });
    return parts.join("\n").toLowerCase();
  }
  function verdicts(p) {
    var out = [];
    (p.judge || []).forEach(function (j) {
      if (!j || j.preference === undefined || j.preference === null) return;
      if (j.preference > 0.5) out.push("win");
      if (j.preference < 0.5) out.push("loss");
      if (!j.consistent) out.push("inconsistent");
    });
    return out;
  }
  function apply() {
    var q = $("q").value.trim().toLowerCase(), f = $("f-judge").value;
    if (q && !hay) hay = P.map(text);  // built once, on the first search
    shown = [];
    for (var i = 0; i < P.length; i++) {
      if (f && verdicts(P[i]).indexOf(f) < 0) continue;
      if (q && hay[i].indexOf(q) < 0) continue;
      shown.push(i);
    }
    page = 0;
    render();
    $("list").setAttribute("data-query", q);  // what the list now shows, for tests
    document.documentElement.dataset.rendered = "1";
  }

  function diffBox(runs) {
    var box = el("div", "diff txt");
    runs.forEach(function (r) {
      box.appendChild(r[0] === 0 ? document.createTextNode(r[1]) : el(r[0] < 0 ? "del" : "ins", null, r[1]));
    });
    return box;
  }
  function votesTable(j) {
    var t = el("table", "votes");
    var head = el("tr");
    ["vote", "principle", "order", "p(first shown better)"].forEach(function (h) { head.appendChild(el("th", null, h)); });
    t.appendChild(head);
    j.votes.forEach(function (v) {
      var tr = el("tr");
      tr.appendChild(el("td", null, String(v[0])));
      tr.appendChild(el("td", null, v[1]));
      tr.appendChild(el("td", null, v[2] === "ab" ? N[0] + " shown first" : "other shown first"));
      tr.appendChild(el("td", null, v[3] === null ? "no answer" : v[3].toFixed(3)));
      t.appendChild(tr);
    });
    return t;
  }
  function judgeLine(j, k) {
    if (!j) return el("p", "note", "not judged (compare without --judge)");
    if (j.why) return el("p", "note", j.why === "identical" ? "identical answers: a tie, no call made" : j.why.replace("_", " "));
    var line = el("p", "lbl");
    if (j.preference === null) {
      line.textContent = "judge: no label (" + j.status + ")";
      return line;
    }
    var who = j.preference > 0.5 ? N[k] : j.preference < 0.5 ? N[0] : "neither";
    line.appendChild(el("span", j.preference > 0.5 ? "pref win" : j.preference < 0.5 ? "pref loss" : "pref", "judge prefers " + who));
    line.appendChild(document.createTextNode(" · preference for " + N[k] + " " + j.preference.toFixed(3) +
      (j.consistent ? " · both orders agree" : " · the two orders disagree")));
    return line;
  }
  function detail(p) {
    var box = el("div", "detail");
    box.appendChild(el("h4", null, "Prompt"));
    p.prompt.forEach(function (m) {
      var msg = el("div", "msg");
      msg.appendChild(el("span", "role", m[0]));
      msg.appendChild(document.createTextNode(m[1]));
      box.appendChild(msg);
    });
    var cols = el("div", "answers");
    p.answers.forEach(function (a, k) {
      var col = el("div");
      var src = p.sources[k] ? "revision of round " + p.sources[k] : "first answer";
      col.appendChild(el("h4", null, N[k] + " (" + src + ")" + (k ? ", against " + N[0] : "")));
      if (a === null) col.appendChild(el("p", "note", "no answer (the record failed or was skipped)"));
      else if (k && p.diffs[k - 1]) col.appendChild(diffBox(p.diffs[k - 1]));
      else col.appendChild(el("div", "txt", a));
      if (k) {
        var j = p.judge[k - 1];
        col.appendChild(judgeLine(j, k));
        if (j && j.votes && j.votes.length) {
          var more = el("details", "round");
          more.appendChild(el("summary", null, j.votes.length + " votes"));
          more.appendChild(votesTable(j));
          col.appendChild(more);
        }
      }
      cols.appendChild(col);
    });
    box.appendChild(cols);
    return box;
  }
  function row(i) {
    var p = P[i];
    var rec = el("div", "rec");
    rec.setAttribute("data-id", p.id);
    var head = el("div", "head");
    head.appendChild(el("span", "id", p.id));
    var last = p.prompt.length ? p.prompt[p.prompt.length - 1][1] : "";
    head.appendChild(el("span", "snip", last));
    (p.judge || []).forEach(function (j, k) {
      if (j && j.preference !== undefined && j.preference !== null) {
        var cls = j.preference > 0.5 ? "badge pref" : j.preference < 0.5 ? "badge drop" : "badge";
        head.appendChild(el("span", cls, N[k + 1] + " " + pct(j.preference)));
      } else if (j && j.why === "identical") {
        head.appendChild(el("span", "badge", N[k + 1] + " identical"));
      }
    });
    var open = null;
    head.addEventListener("click", function () {
      if (open) { rec.removeChild(open); open = null; }
      else { open = detail(p); rec.appendChild(open); }
    });
    rec.appendChild(head);
    return rec;
  }
  function render() {
    var list = $("list");
    list.textContent = "";
    var pages = Math.max(1, Math.ceil(shown.length / PAGE));
    page = Math.min(Math.max(page, 0), pages - 1);
    shown.slice(page * PAGE, (page + 1) * PAGE).forEach(function (i) { list.appendChild(row(i)); });
    if (!shown.length) list.appendChild(el("p", "note", "No prompt matches."));
    $("page").textContent = "page " + (page + 1) + " of " + pages;
    $("count").textContent = "(" + shown.length + " of " + P.length + ")";
  }

  $("q").addEventListener("input", apply);
  $("f-judge").addEventListener("change", apply);
  $("prev").addEventListener("click", function () { page--; render(); });
  $("next").addEventListener("click", function () { page++; render(); });
  apply();
})();
