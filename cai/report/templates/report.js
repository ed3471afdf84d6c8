"use strict";
// The pair viewer. Every piece of model or prompt text is written with textContent, never as
// HTML, so text that looks like markup stays text.
(function () {
  var D = JSON.parse(document.getElementById("viewer-data").textContent);
  var R = D.records, P = D.principles, T = D.texts, PAGE = D.page_size || 50;
  var labelsMode = D.mode === "labels";
  var shown = [], page = 0, hay = null;

  function $(id) { return document.getElementById(id); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }
  function principlesOf(r) {
    var out = [];
    (r.r || []).forEach(function (x) { if (out.indexOf(x.n) < 0) out.push(x.n); });
    (r.vt || []).forEach(function (v) { if (out.indexOf(v[0]) < 0) out.push(v[0]); });
    return out;
  }
  function fillSelect(sel, values) {
    values.forEach(function (v) {
      var o = el("option", null, v[1]);
      o.value = v[0];
      sel.appendChild(o);
    });
  }
  function counted(key) {
    var c = {};
    R.forEach(function (r) { c[r[key]] = (c[r[key]] || 0) + 1; });
    return Object.keys(c).sort().map(function (k) { return [k, k + " (" + c[k] + ")"]; });
  }

  // -- search and filters ---------------------------------------------------------------------
  function text(r) {
    var parts = [r.id];
    r.p.forEach(function (m) { parts.push(m[1]); });
    if (r.a) parts.push(r.a);
    if (r.A) parts.push(r.A, r.B);
    (r.r || []).forEach(function (x) { parts.push(x.c); if (x.rv) parts.push(x.rv); });
    return parts.join("\n").toLowerCase();
  }
  function apply() {
    var q = $("q").value.trim().toLowerCase();
    var pr = $("f-principle").value, st = $("f-status").value, vd = $("f-verdict").value;
    var want = pr === "" ? -1 : Number(pr);
    if (q && !hay) hay = R.map(text);  // built once, on the first search
    shown = [];
    for (var i = 0; i < R.length; i++) {
      var r = R[i];
      if (st && r.s !== st) continue;
      if (vd && r.v !== vd) continue;
      if (want >= 0 && principlesOf(r).indexOf(want) < 0) continue;
      if (q && hay[i].indexOf(q) < 0) continue;
      shown.push(i);
    }
    page = 0;
    render();
    $("list").setAttribute("data-query", q);  // what the list now shows, for tests
  }

  // -- word-level diff ------------------------------------------------------------------------
  function diff(a, b) {
    var x = a.match(/\s+|[^\s]+/g) || [], y = b.match(/\s+|[^\s]+/g) || [];
    var pre = 0;
    while (pre < x.length && pre < y.length && x[pre] === y[pre]) pre++;
    var suf = 0;
    while (suf < x.length - pre && suf < y.length - pre &&
           x[x.length - 1 - suf] === y[y.length - 1 - suf]) suf++;
    var xs = x.slice(pre, x.length - suf), ys = y.slice(pre, y.length - suf);
    var ops = [];  // [kind, token]: "=", "-", "+"
    var n = xs.length, m = ys.length;
    if (n * m > 4e6) {
      xs.forEach(function (t) { ops.push(["-", t]); });
      ys.forEach(function (t) { ops.push(["+", t]); });
    } else {
      var w = m + 1, L = new Uint32Array((n + 1) * w);
      for (var i = n - 1; i >= 0; i--)
        for (var j = m - 1; j >= 0; j--)
          L[i * w + j] = xs[i] === ys[j] ? L[(i + 1) * w + j + 1] + 1
            : Math.max(L[(i + 1) * w + j], L[i * w + j + 1]);
      var i2 = 0, j2 = 0;
      while (i2 < n && j2 < m) {
        if (xs[i2] === ys[j2]) { ops.push(["=", xs[i2]]); i2++; j2++; }
        else if (L[(i2 + 1) * w + j2] >= L[i2 * w + j2 + 1]) ops.push(["-", xs[i2++]]);
        else ops.push(["+", ys[j2++]]);
      }
      while (i2 < n) ops.push(["-", xs[i2++]]);
      while (j2 < m) ops.push(["+", ys[j2++]]);
    }
    var box = el("div", "diff txt");
    box.appendChild(document.createTextNode(x.slice(0, pre).join("")));
    var kind = null, buf = [];
    function flush() {
      if (!buf.length) return;
      var s = buf.join("");
      box.appendChild(kind === "=" ? document.createTextNode(s) : el(kind === "-" ? "del" : "ins", null, s));
      buf = [];
    }
    ops.forEach(function (op) {
      if (op[0] !== kind) { flush(); kind = op[0]; }
      buf.push(op[1]);
    });
    flush();
    box.appendChild(document.createTextNode(x.slice(x.length - suf).join("")));
    return box;
  }

  // -- one record -----------------------------------------------------------------------------
  function block(parent, title, body) {
    parent.appendChild(el("h4", null, title));
    parent.appendChild(typeof body === "string" ? el("div", "txt", body) : body);
  }
  function kindBadge(k) {
    var base = k.split(":")[0];
    var b = el("span", "kind k-" + base, k.replace("problem:", "problem: ").replace("_", " "));
    return b;
  }
  function votes(parent, r) {
    if (r.pa === undefined) return;
    var p = el("p", null, "p_a = " + (r.pa === null ? "none" : r.pa) +
      (r.pc === true ? " · consistent in both orders" : r.pc === false ? " · orders disagree" : ""));
    parent.appendChild(p);
    if (!r.vt || !r.vt.length) return;
    var t = el("table", "votes"), h = el("tr");
    ["principle", "order", "p_first", "reply", "problem"].forEach(function (c) { h.appendChild(el("th", null, c)); });
    t.appendChild(h);
    r.vt.forEach(function (v) {
      var tr = el("tr");
      [P[v[0]], v[1], v[2] === null ? "-" : String(v[2]), v[3], v[4] || ""].forEach(function (c) {
        tr.appendChild(el("td", "txt", c));
      });
      t.appendChild(tr);
    });
    parent.appendChild(t);
  }
  function detail(r) {
    var d = el("div", "detail");
    if (r.e) d.appendChild(el("p", "note", "Error: " + r.e));
    if (r.le) d.appendChild(el("p", "note", "Label: " + r.le));
    d.appendChild(el("h4", null, "Conversation"));
    r.p.forEach(function (m) {
      var box = el("div", "msg");
      box.appendChild(el("span", "role", m[0]));
      box.appendChild(document.createTextNode(m[1]));
      d.appendChild(box);
    });
    if (labelsMode) {
      var cols = el("div", "cols"), a = el("div"), b = el("div");
      // A pair of a generate run: A is its first answer, B the revision export would choose.
      block(a, r.rev ? "Response A: the first answer" : "Response A", r.A);
      block(b, r.rev ? "Response B: the revision" : "Response B", r.B);
      cols.appendChild(a); cols.appendChild(b);
      d.appendChild(cols);
      block(d, "A → B, word by word", diff(r.A, r.B));
      d.appendChild(el("h4", null, "Label"));
      votes(d, r);
      return d;
    }
    if (r.s !== "ok") return d;
    var chosen = r.c >= 0 ? r.r[r.c].rv : r.a;
    var which = r.c >= 0 ? "the revision of round " + (r.c + 1) : "the first answer itself";
    block(d, "First answer → chosen answer (" + which + ")" + (r.af ? " · first answer " + r.af : ""),
      diff(r.a, chosen));
    r.r.forEach(function (x, i) {
      var det = el("details", "round"), sum = el("summary");
      sum.appendChild(el("b", null, "Round " + (i + 1) + ": "));
      sum.appendChild(document.createTextNode(P[x.n]));
      sum.appendChild(kindBadge(x.k));
      if (x.sim !== undefined) sum.appendChild(el("span", "note", "  similarity to the answer before: " + x.sim));
      det.appendChild(sum);
      det.addEventListener("toggle", function once() {
        det.removeEventListener("toggle", once);
        block(det, "Critique request", T[x.q]);
        block(det, "Critique", x.c);
        if (x.rv !== undefined) {
          if (x.rq >= 0) block(det, "Revision request", T[x.rq]);
          block(det, "Revision", x.rv === null ? "(none)" : x.rv);
        }
      });
      d.appendChild(det);
    });
    if (r.pa !== undefined) { d.appendChild(el("h4", null, "Label")); votes(d, r); }
    return d;
  }
  function row(i) {
    var r = R[i], box = el("div", "rec"), head = el("div", "head");
    head.appendChild(el("span", "id", r.id));
    head.appendChild(el("span", "badge " + r.s, r.s));
    if (r.v) head.appendChild(el("span", "badge " + r.v.split(":")[0].split(" ")[0], r.v));
    var last = r.p.length ? r.p[r.p.length - 1][1] : "";
    head.appendChild(el("span", "snip", last.slice(0, 240)));
    var names = principlesOf(r).map(function (n) { return P[n]; }).join(", ");
    if (names) head.appendChild(el("span", "note", names.slice(0, 80)));
    head.setAttribute("role", "button");
    head.tabIndex = 0;
    var open = null;
    function toggle() {
      if (open) { open.remove(); open = null; box.classList.remove("open"); return; }
      open = detail(r);
      box.appendChild(open);
      box.classList.add("open");
    }
    head.addEventListener("click", toggle);
    head.addEventListener("keydown", function (e) { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); toggle(); } });
    box.appendChild(head);
    return box;
  }
  function render() {
    var list = $("list"), pages = Math.max(1, Math.ceil(shown.length / PAGE));
    page = Math.min(Math.max(0, page), pages - 1);
    var frag = document.createDocumentFragment();
    shown.slice(page * PAGE, (page + 1) * PAGE).forEach(function (i) { frag.appendChild(row(i)); });
    if (!shown.length) frag.appendChild(el("p", "note", "No record matches."));
    list.replaceChildren(frag);
    $("count").textContent = shown.length === R.length ? "(" + R.length + ")"
      : "(" + shown.length + " of " + R.length + ")";
    $("page").textContent = "page " + (page + 1) + " of " + pages;
    ["prev", "prev2"].forEach(function (id) { $(id).disabled = page === 0; });
    ["next", "next2"].forEach(function (id) { $(id).disabled = page >= pages - 1; });
  }

  var used = {};
  R.forEach(function (r) { principlesOf(r).forEach(function (n) { used[n] = (used[n] || 0) + 1; }); });
  fillSelect($("f-principle"), Object.keys(used).map(Number).sort(function (a, b) {
    return P[a] < P[b] ? -1 : 1;
  }).map(function (n) { return [String(n), P[n] + " (" + used[n] + ")"]; }));
  fillSelect($("f-status"), counted("s"));
  fillSelect($("f-verdict"), counted("v"));
  var timer = null;
  $("q").addEventListener("input", function () { clearTimeout(timer); timer = setTimeout(apply, 150); });
  ["f-principle", "f-status", "f-verdict"].forEach(function (id) { $(id).addEventListener("change", apply); });
  ["prev", "prev2"].forEach(function (id) { $(id).addEventListener("click", function () { page--; render(); }); });
  ["next", "next2"].forEach(function (id) { $(id).addEventListener("click", function () { page++; render(); }); });
  for (var i = 0; i < R.length; i++) shown.push(i);
  render();
  performance.mark("cai-rendered");
  document.documentElement.setAttribute("data-rendered", "1");
})();
