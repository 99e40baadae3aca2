/* gdlab report: builds the page from the JSON in #gdlab-data with uPlot (loaded before this script).
   Every text from the data goes into the page as text (textContent, attributes), never as markup.
   The charts' state is readable at window.gdlabReport (tests read it); the uPlot instances at window.gdlabPlots. */
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("gdlab-data").textContent);
  var state = { kind: data.kind, title: data.title, charts: {}, errors: [], ready: false };
  var plots = {};
  window.gdlabReport = state;
  window.gdlabPlots = plots;
  window.addEventListener("error", function (e) { state.errors.push(String(e.message)); });

  var PALETTE = ["#3559a8", "#e07b00", "#2e7d32", "#8e44ad", "#c62828", "#00838f", "#6d4c41", "#ad1457",
                 "#546e7a", "#9e9d24"];
  var root = document.getElementById("report");

  function el(tag, attrs) {
    var node = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (k) {
        var v = attrs[k];
        if (v === null || v === undefined || v === false) return;
        if (k === "text") node.textContent = String(v);
        else if (k === "class") node.className = v;
        else node.setAttribute(k, String(v));
      });
    }
    for (var i = 2; i < arguments.length; i++) add(node, arguments[i]);
    return node;
  }
  function add(node, child) {
    if (child === null || child === undefined || child === false) return;
    if (Array.isArray(child)) { child.forEach(function (c) { add(node, c); }); return; }
    node.appendChild(typeof child === "object" ? child : document.createTextNode(String(child)));
  }
  function fmt(v) {
    if (v === null || v === undefined) return "\u2013";
    if (typeof v === "number") {
      if (!isFinite(v)) return String(v);
      if (Number.isInteger(v)) return String(v);
      var a = Math.abs(v);
      if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(3);
      return String(+v.toPrecision(4));
    }
    if (typeof v === "boolean") return v ? "yes" : "no";
    if (Array.isArray(v)) return v.map(fmt).join(", ");
    if (typeof v === "object") return "{" + Object.keys(v).map(function (k) { return k + ": " + fmt(v[k]); })
      .join(", ") + "}";
    return String(v);
  }
  function pairs(o) { return Object.keys(o || {}).map(function (k) { return k + " " + fmt(o[k]); }).join(", "); }
  function percent(v) { return typeof v === "number" ? (100 * v).toFixed(2) + "%" : fmt(v); }
  function remedyText(r) {
    if (!r) return "";
    var rest = Object.keys(r).filter(function (k) { return k !== "action"; })
      .map(function (k) { return k + " " + fmt(r[k]); });
    return (r.action || "") + (rest.length ? " (" + rest.join(", ") + ")" : "");
  }
  function finalLabel(k) {
    return { train_loss: "train loss", val_loss: "validation loss", val_accuracy: "validation accuracy",
             val_subset_accuracy: "exact match", val_mae: "validation MAE", val_r2: "validation R\u00b2" }[k] ||
           k.replace(/_/g, " ");
  }
  function finalValue(k, v) { return /accuracy/.test(k) ? percent(v) : fmt(v); }

  // -- sortable tables ---------------------------------------------------------------------------------------
  function table(columns, rows, options) {
    options = options || {};
    var head = el("tr");
    var body = el("tbody");
    var t = el("table", { class: "data" }, el("thead", null, head), body);
    columns.forEach(function (c, i) {
      var th = el("th", { class: options.sortable ? "sortable" : null, "data-column": c.key, text: c.label });
      if (options.sortable) th.addEventListener("click", function () { sortBy(t, i, th); });
      head.appendChild(th);
    });
    rows.forEach(function (row) {
      var tr = el("tr", { class: options.rowClass ? options.rowClass(row) : null });
      columns.forEach(function (c) {
        var v = row[c.key];
        var cell = c.render ? c.render(row) : fmt(v);
        var td = el("td", { class: typeof v === "number" ? "num" : c.cls || null }, cell);
        td.dataset.sort = typeof v === "number" ? String(v) : (v === null || v === undefined ? "" : String(v));
        td.dataset.numeric = typeof v === "number" ? "1" : "0";
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
    return el("div", { class: "wrap" }, t);
  }
  function sortBy(t, column, th) {
    var ascending = !th.classList.contains("sorted-asc");
    t.querySelectorAll("th").forEach(function (h) { h.classList.remove("sorted-asc", "sorted-desc"); });
    th.classList.add(ascending ? "sorted-asc" : "sorted-desc");
    var body = t.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[column].dataset, y = b.cells[column].dataset;
      var c;
      if (x.sort === "" || y.sort === "") c = (x.sort === "") - (y.sort === "");  // blanks last
      else if (x.numeric === "1" && y.numeric === "1") c = (+x.sort) - (+y.sort);
      else c = x.sort.localeCompare(y.sort);
      return x.sort === "" || y.sort === "" ? c : ascending ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }

  // -- charts ------------------------------------------------------------------------------------------------
  function marksOf(runs) {
    var marks = [];
    runs.forEach(function (r, i) {
      var who = runs.length > 1 ? r.label + ": " : "";
      (r.findings || []).forEach(function (f) {
        if (typeof f.step === "number")
          marks.push({ kind: "finding", code: f.code, severity: f.severity, step: f.step, run: i, who: who,
                       text: who + f.code + " (" + f.severity + ", step " + f.step + "): " + (f.explanation || "") });
      });
      (r.remedies || []).forEach(function (m) {
        if (typeof m.step === "number")
          marks.push({ kind: "remedy", code: m.action, severity: "remedy", step: m.step, run: i, who: who,
                       text: who + "remedy at step " + m.step + ": " + m.action + " - " + (m.reason || "") });
      });
    });
    return marks;
  }

  // markers: a line at each finding's and remedy's x (its step, or where that step is on the chosen x axis), and
  // a flag naming it (and its run, where the page has several) kept inside the plot, never over the axes' labels
  function markersPlugin(marks) {
    var nodes = [];
    function place(u) {
      var width = u.over.clientWidth;
      nodes.forEach(function (n) {
        var left = u.valToPos(n.mark.x, "x");
        var shown = !n.mark.hidden && left >= 0 && left <= width;
        n.node.style.display = shown ? "" : "none";
        n.node.style.left = left + "px";
        n.mark.left = left;
        var flag = n.node.firstChild;
        var w = flag.getBoundingClientRect().width;
        var from = Math.max(0, Math.min(width - w, left - w / 2));  // the flag's left edge, inside the plot
        flag.style.left = (from - left - 1) + "px";  // (the mark's box starts 1 px right of its step: margin, border)
        n.from = from;
        n.to = from + w;
      });
    }
    return {
      hooks: {
        ready: [function (u) {
          marks.forEach(function (m) {
            var label = (m.who || "") + (m.kind === "remedy" ? "\u2691 " + m.code : m.code);
            var flag = el("span", { class: "flag", title: m.text, text: label });
            var node = el("div", { class: "mark " + (m.kind === "remedy" ? "remedy" : "sev-" + m.severity),
                                   "data-step": m.step, "data-code": m.code, "data-kind": m.kind, "data-run": m.run },
                          flag);
            u.over.appendChild(node);
            nodes.push({ node: node, mark: m });
          });
          place(u);
          // flags that would touch are stacked in rows, so that each stays readable
          var placed = [];
          nodes.forEach(function (n) {
            if (n.node.style.display === "none") return;
            var row = 0;
            while (placed.some(function (p) { return p.row === row && p.from < n.to + 4 && n.from < p.to + 4; })) row++;
            placed.push({ row: row, from: n.from, to: n.to });
            n.node.firstChild.style.top = 20 * row + "px";
          });
        }],
        setScale: [function (u, key) { if (key === "x") { place(u); if (u.gdlabReady) syncX(u); } }],
        setSize: [place],
      },
    };
  }

  function referencePlugin(level) {
    return {
      hooks: {
        draw: [function (u) {
          if (level === null || level === undefined) return;
          var y = u.valToPos(level, "y", true);
          if (!(y >= u.bbox.top && y <= u.bbox.top + u.bbox.height)) return;
          var ctx = u.ctx;
          ctx.save();
          ctx.strokeStyle = "#8a93a3";
          ctx.setLineDash([4, 4]);
          ctx.lineWidth = 1;
          ctx.beginPath();
          ctx.moveTo(u.bbox.left, y);
          ctx.lineTo(u.bbox.left + u.bbox.width, y);
          ctx.stroke();
          ctx.restore();
        }],
      },
    };
  }

  // a sequential scale (dark blue to orange) for members ordered by a setting: their lr, their seed
  var RAMP = ["#0d0887", "#5c01a6", "#9c179e", "#cc4778", "#ed7953", "#f89540"];
  function ramp(t) {
    var p = Math.max(0, Math.min(1, t)) * (RAMP.length - 1), i = Math.min(RAMP.length - 2, Math.floor(p)), f = p - i;
    var a = parseInt(RAMP[i].slice(1), 16), b = parseInt(RAMP[i + 1].slice(1), 16);
    var mix = function (s) { return Math.round(((a >> s) & 255) * (1 - f) + ((b >> s) & 255) * f); };
    return "#" + ((1 << 24) + (mix(16) << 16) + (mix(8) << 8) + mix(0)).toString(16).slice(1);
  }
  function groupValues(spec, key) {
    var seen = {};
    spec.series.forEach(function (s) { var v = (s.group || {})[key]; seen[String(v)] = v; });
    return Object.keys(seen).map(function (k) { return seen[k]; }).sort(function (a, b) {
      return typeof a === "number" && typeof b === "number" ? a - b : String(a).localeCompare(String(b));
    });
  }
  function colour(spec, s, i) {
    if (spec.groups && spec.groups.length) {
      var values = groupValues(spec, spec.groups[0]);
      var at = values.indexOf((s.group || {})[spec.groups[0]]);
      return ramp(values.length > 1 ? at / (values.length - 1) : 0);
    }
    if (data.kind === "run" && spec.id === "loss") return PALETTE[0];
    if (data.kind !== "run") return PALETTE[s.run % PALETTE.length];
    var n = 0;  // the series' place among those that are not bands
    for (var k = 0; k < i; k++) if (spec.series[k].style !== "spread") n++;
    return PALETTE[n % PALETTE.length];
  }
  function alpha(hex, a) {
    var n = parseInt(hex.slice(1), 16);
    return "rgba(" + (n >> 16) + "," + ((n >> 8) & 255) + "," + (n & 255) + "," + a + ")";
  }

  // x values with no y at all (the ends of the run), so that every step chart spans the same steps
  function widen(joined, extent) {
    extent.forEach(function (x) {
      var xs = joined[0];
      var i = 0;
      while (i < xs.length && xs[i] < x) i++;
      if (xs[i] === x) return;
      joined.forEach(function (column, c) { column.splice(i, 0, c === 0 ? x : undefined); });
    });
  }

  // tick labels that never touch: each label's box (its text's width along x, the font's height along y) at its
  // tick; a label is kept only where it clears those kept before it. On a log axis the powers of ten come first,
  // then 5 and 2 times them, so a long range keeps 1, 10, 100 and a short one 1, 2, 5, 10 as room allows.
  var AXIS_FONT = "12px system-ui, -apple-system, \"Segoe UI\", Roboto, Arial, sans-serif";
  var AXIS_PX = 12, LABEL_GAP = 6;
  var measurer = document.createElement("canvas").getContext("2d");
  function textWidth(text) { measurer.font = AXIS_FONT; return measurer.measureText(text).width; }
  function mantissaRank(v) {
    if (!(v > 0)) return 3;
    var m = v / Math.pow(10, Math.floor(Math.log10(v) + 1e-9));
    return Math.abs(m - 1) < 1e-6 ? 0 : Math.abs(m - 5) < 1e-6 ? 1 : Math.abs(m - 2) < 1e-6 ? 2 : 3;
  }
  function tick(v) {  // a tick's label: short (1e-4, 2.5e-5, 0.03, 1500)
    var a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e5)) return Number(v.toPrecision(3)).toExponential();
    return String(+v.toPrecision(6));
  }
  function thin(u, axisIdx, splits, labels, log) {
    var horizontal = axisIdx === 0;
    var boxes = splits.map(function (v, i) {
      if (v === null || v === undefined || !labels[i]) return null;
      var at = u.valToPos(v, horizontal ? "x" : "y");
      var half = (horizontal ? textWidth(labels[i]) : AXIS_PX) / 2 + LABEL_GAP / 2;
      return [at - half, at + half];
    });
    var order = splits.map(function (v, i) { return i; }).filter(function (i) { return boxes[i]; });
    if (log) order.sort(function (a, b) { return mantissaRank(splits[a]) - mantissaRank(splits[b]) || a - b; });
    var kept = [];
    order.forEach(function (i) {
      if (kept.every(function (k) { return boxes[k][1] <= boxes[i][0] || boxes[i][1] <= boxes[k][0]; })) kept.push(i);
    });
    return labels.map(function (text, i) { return kept.indexOf(i) >= 0 ? text : ""; });
  }
  function axis(options, log, axisIdx) {
    options.font = AXIS_FONT;
    options.values = function (u, splits) {
      var labels = splits.map(function (v) {
        return v === null || v === undefined || (log && mantissaRank(v) === 3) ? "" : tick(v);
      });
      return thin(u, axisIdx, splits, labels, log);
    };
    if (log) {  // ticks and grid lines at 1, 2 and 5 times a power of ten (not all nine of each decade)
      var keep = function (u, splits) {
        return splits.map(function (v) { return mantissaRank(v) < 3 ? v : null; });
      };
      options.grid = { show: true, stroke: "rgba(0,0,0,0.07)", width: 2, filter: keep };  // uPlot's defaults
      options.ticks = { show: true, stroke: "rgba(0,0,0,0.07)", width: 2, size: 10, filter: keep };
    }
    return options;
  }

  // TensorBoard's smoothing: a moving average of the points drawn, debiased (so its first points are not pulled
  // toward zero); weight 0 draws the raw values
  function smoothed(ys, weight) {
    if (!(weight > 0)) return ys.slice();
    var last = 0, n = 0;
    return ys.map(function (v) {
      if (v === null || v === undefined || !isFinite(v)) return v;
      last = last * weight + (1 - weight) * v;
      n++;
      return last / (1 - Math.pow(weight, n));
    });
  }

  // the comparison page's x axes: each run's steps turned into epochs, its share of the run, or seconds
  var X_AXES = { step: "step", epoch: "epoch", share: "share of the run", time: "wall time (s)" };
  function interp(x, xs, ys) {
    if (xs.length < 2) return null;
    var i = 1;
    while (i < xs.length - 1 && xs[i] < x) i++;  // the segment that holds x (the last one extended past the end)
    var x0 = xs[i - 1], x1 = xs[i];
    return x1 === x0 ? ys[i] : ys[i - 1] + (ys[i] - ys[i - 1]) * (x - x0) / (x1 - x0);
  }
  function toX(clock, step, kind) {
    if (kind === "step" || !clock) return step;
    if (kind === "share") return clock.total ? step / clock.total : null;
    if (kind === "epoch")
      return clock.steps.length > 1 ? interp(step, clock.steps, clock.epochs) : step / (clock.per_epoch || 1);
    if (kind === "time") {
      if (clock.seconds && clock.steps.length > 1) return interp(step, clock.steps, clock.seconds);
      return clock.run_seconds !== null && clock.total ? step / clock.total * clock.run_seconds : null;
    }
    return step;
  }
  function hasTime(runs) {
    return runs.every(function (r) {
      return r.clock && (r.clock.seconds || (r.clock.run_seconds !== null && r.clock.total));
    });
  }

  // a chart as the page's view shows it: on the chosen x axis, smoothed by the slider where it applies
  function viewOf(spec, marks, view) {
    if (!view) return { spec: spec, marks: marks.map(function (m) { return Object.assign({ x: m.step }, m); }) };
    var runs = data.runs;
    var clock = function (i) { return runs[i] && runs[i].clock; };
    var series = spec.series.map(function (s) {
      var hidden = !!view.hidden[s.run];  // a run switched off: no points, so the axes fit the others
      var xs = s.x.map(function (v) { return toX(clock(s.run), v, view.x); });
      var keep = xs.map(function (v) { return !hidden && v !== null && isFinite(v); });
      return Object.assign({}, s, {
        x: xs.filter(function (v, i) { return keep[i]; }),
        y: (spec.smooth ? smoothed(s.y, view.smooth) : s.y).filter(function (v, i) { return keep[i]; }),
        hidden: hidden,
      });
    });
    return {
      spec: Object.assign({}, spec, { x: X_AXES[view.x], xkind: view.x, series: series,
                                      extent: view.x === "step" ? spec.extent : null }),
      marks: marks.map(function (m) {
        return Object.assign({}, m, { x: toX(clock(m.run), m.step, view.x), hidden: !!view.hidden[m.run] });
      }),
    };
  }

  function chartBox(spec, holder) {
    var longLabel = spec.ylabel.length > 22;
    var box = el("section", { class: "chart", "data-chart": spec.id }, el("h3", { text: spec.title }),
      longLabel ? el("p", { class: "note", text: "y: " + spec.ylabel }) : null,
      spec.note ? el("p", { class: "note why", text: spec.note }) : null);
    var recorded = spec.series.reduce(function (a, s) { return a + s.recorded; }, 0);
    var drawn = spec.series.reduce(function (a, s) { return a + s.y.length; }, 0);
    if (drawn < recorded)
      box.appendChild(el("p", { class: "note", text: "long series drawn from " + drawn + " of " + recorded +
        " points (each bucket's first, min, max and last: spikes stay)" }));
    holder.appendChild(box);
    return box;
  }

  // a legend of groups: one toggle per value of each grouping setting (a sweep's lr, its seed), not one entry per
  // member; a member is drawn when none of its values is switched off. Under it, the member nearest the cursor.
  function groupLegend(u, spec, colours, box) {
    var hidden = {};
    spec.groups.forEach(function (k) { hidden[k] = {}; });
    var readout = el("div", { class: "readout", text: "hover: the nearest member and its value" });
    function apply() {
      u.batch(function () {
        spec.series.forEach(function (s, i) {
          var show = spec.groups.every(function (k) { return !hidden[k][String((s.group || {})[k])]; });
          if (u.series[i + 1].show !== show) u.setSeries(i + 1, { show: show });
        });
      });
    }
    var node = el("div", { class: "groups" }, spec.groups.map(function (key, g) {
      var values = groupValues(spec, key);
      return el("div", { class: "group", "data-key": key }, el("span", { class: "gkey", text: key + ":" }),
        values.map(function (v) {
          var members = spec.series.filter(function (s) { return (s.group || {})[key] === v; }).length;
          var first = spec.series.findIndex(function (s) { return (s.group || {})[key] === v; });
          var button = el("button", { type: "button", class: "gval", "data-key": key, "data-value": String(v),
                                      "aria-pressed": "true", title: members + (members === 1 ? " member" : " members") },
            g === 0 ? el("i", { class: "swatch", style: "background:" + colours[first] }) : null, fmt(v));
          button.addEventListener("click", function () {
            var off = !hidden[key][String(v)];
            hidden[key][String(v)] = off;
            button.setAttribute("aria-pressed", off ? "false" : "true");
            apply();
          });
          return button;
        }));
    }), readout);
    box.appendChild(node);
    u.gdlabReadout = function () {
      var i = u.cursor.idx, top = u.cursor.top;
      if (i === null || i === undefined || top < 0) return;
      var best = null;
      for (var k = 1; k < u.series.length; k++) {
        var v = u.data[k][i];
        if (!u.series[k].show || v === null || v === undefined) continue;
        var d = Math.abs(u.valToPos(v, "y") - top);
        if (best === null || d < best.d) best = { d: d, k: k, v: v };
      }
      if (!best) return;
      var s = spec.series[best.k - 1];
      var about = Object.keys(s.group || {}).map(function (g) { return g + " " + fmt(s.group[g]); }).join(", ");
      readout.textContent = s.label + (about ? " (" + about + ")" : "") + ": " + fmt(best.v) + " at " + spec.x + " " +
        fmt(u.data[0][i]);
    };
  }

  function chart(spec, marks, box) {
    var joined = uPlot.join(spec.series.map(function (s) { return [s.x, s.y]; }));
    if (spec.extent) widen(joined, spec.extent);
    var grouped = spec.groups && spec.groups.length > 0;
    var bands = [];
    var series = [{ label: spec.x, value: function (u, v) { return v === null || v === undefined ? "\u2013" : fmt(v); } }];
    var colours = spec.series.map(function (s, i) { return colour(spec, s, i); });
    spec.series.forEach(function (s, i) {
      var c = s.style === "spread" ? colours[s.of] : colours[i];
      var option = { label: s.label, stroke: c, width: 1.5, spanGaps: true, show: !s.hidden,
                     value: function (u, v) { return v === null || v === undefined ? "\u2013" : fmt(v); },
                     points: { show: s.style === "points" || s.x.length < 40, size: 5 } };
      if (s.style === "raw") { option.stroke = alpha(c, 0.35); option.width = 1; option.points = { show: false }; }
      if (s.style === "smooth") option.width = 2.2;
      if (s.style === "dots") { option.paths = function () { return null; }; option.points = { show: true, size: 8 }; }
      if (s.style === "thin") { option.width = 1; option.points = { show: false }; }
      if (s.style === "spread") { option.stroke = alpha(c, 0.5); option.width = 0.5; option.points = { show: false }; }
      series.push(option);
    });
    var pairs = {};  // the max and min of merged steps of one series: a band between them in its colour
    spec.series.forEach(function (s, i) {
      if (s.style === "spread") (pairs[s.of] = pairs[s.of] || []).push(i + 1);
    });
    Object.keys(pairs).forEach(function (of) {
      if (pairs[of].length === 2) bands.push({ series: pairs[of], fill: alpha(colours[of], 0.15) });
    });
    var logY = spec.log;
    var kind = spec.xkind || spec.x;
    var opts = {
      width: Math.max(320, box.clientWidth - 20),
      height: 250,
      scales: { x: { time: false, distr: spec.xlog ? 3 : 1, log: 10 }, y: { distr: logY ? 3 : 1, log: 10 } },
      axes: [
        axis({ label: spec.x, size: 42 }, spec.xlog, 0),
        axis({ label: spec.ylabel.length > 22 ? "" : spec.ylabel, size: 64 }, logY, 1),
      ],
      series: series,
      bands: bands,
      cursor: { drag: { x: true, y: false, setScale: true },
                sync: data.kind === "sweep" ? undefined : { key: "x-" + kind } },
      legend: { show: !grouped, live: true },
      hooks: { setCursor: [function (u) { if (u.gdlabReadout) u.gdlabReadout(); }] },
      plugins: [markersPlugin(spec.markers ? marks : []), referencePlugin(spec.reference)],
    };
    var u = new uPlot(opts, joined, box);
    if (grouped) groupLegend(u, spec, colours, box);
    u.gdlabX = kind;
    u.gdlabReady = true;
    plots[spec.id] = u;
    state.charts[spec.id] = {
      title: spec.title, x: spec.x, log: logY, groups: spec.groups || [],
      series: spec.series.map(function (s, i) {
        var column = u.data[i + 1];
        var points = 0;
        for (var k = 0; k < column.length; k++) if (column[k] !== null && column[k] !== undefined) points++;
        return { label: s.label, points: points, recorded: s.recorded, run: s.run, group: s.group || null };
      }),
      markers: (spec.markers ? marks : []).map(function (m) {
        return { kind: m.kind, code: m.code, severity: m.severity, step: m.step, run: m.run, x: m.x };
      }),
    };
    return u;
  }

  // the comparison page's controls: which x axis, which runs, how much smoothing (TensorBoard's three)
  function viewControls(view, redraw) {
    var runs = data.runs;
    var choices = Object.keys(X_AXES).filter(function (k) { return k !== "time" || hasTime(runs); });
    var select = el("select", { id: "x-axis" }, choices.map(function (k) {
      return el("option", { value: k, text: X_AXES[k] });
    }));
    select.addEventListener("change", function () { view.x = select.value; redraw(); });
    var toggles = runs.map(function (r, i) {
      var box = el("input", { type: "checkbox", class: "run-toggle", "data-run": i, checked: "checked" });
      box.addEventListener("change", function () { view.hidden[i] = !box.checked; redraw(); });
      var swatch = el("i", { class: "swatch", style: "background:" + PALETTE[i % PALETTE.length] });
      return el("label", { class: "toggle" }, box, swatch,
        el("span", { text: r.label }));
    });
    var slider = el("input", { type: "range", id: "smoothing", min: "0", max: "0.99", step: "0.01",
                               value: String(view.smooth) });
    var shown = el("output", { for: "smoothing", text: view.smooth.toFixed(2) });
    slider.addEventListener("input", function () {
      view.smooth = +slider.value;
      shown.textContent = view.smooth.toFixed(2);
      redraw();
    });
    return el("div", { class: "controls" },
      el("label", null, "x axis ", select),
      el("span", { class: "runs" }, "runs ", toggles),
      el("label", { title: "a moving average of the points drawn, debiased; 0 draws the raw values" },
        "smoothing ", slider, shown));
  }

  function chartsSection(charts, marks, view) {
    if (!charts.length) return null;
    var grid = el("div", { class: "charts" });
    var section = el("section", null, el("h2", { text: "Charts" }),
      el("p", { class: "key" }, "Hover for the " + (charts[0].x === "step" ? "step" : "point") + " and the values; " +
        "drag across a chart to zoom, double-click to zoom out.",
        marks.length ? [" Marks:", el("i", { class: "k-error" }), "error", el("i", { class: "k-warning" }), "warning",
          el("i", { class: "k-info" }), "info", el("i", { class: "k-remedy" }), "remedy applied",
          marks.some(function (m) { return m.kind === "finding"; }) ? " (click a finding's card to zoom to it)" : ""]
          : null));
    root.appendChild(section);
    var boxes = {};
    function draw() {
      charts.forEach(function (spec) {
        var shown = viewOf(spec, marks, view);
        if (plots[spec.id]) { plots[spec.id].destroy(); delete plots[spec.id]; }
        var box = boxes[spec.id];
        if (box) {
          Array.prototype.slice.call(box.querySelectorAll(".uplot, .groups")).forEach(function (n) { n.remove(); });
        } else {
          box = boxes[spec.id] = chartBox(shown.spec, grid);
        }
        chart(shown.spec, shown.marks, box);
      });
      state.view = view ? { x: view.x, smooth: view.smooth, hidden: Object.keys(view.hidden).filter(function (k) {
        return view.hidden[k]; }).map(Number) } : null;
    }
    if (view) section.appendChild(viewControls(view, draw));
    section.appendChild(grid);
    draw();
    window.addEventListener("resize", function () {
      Object.keys(plots).forEach(function (k) {
        var box = plots[k].root.parentNode;
        plots[k].setSize({ width: Math.max(320, box.clientWidth - 20), height: 250 });
      });
    });
    return section;
  }

  // -- one run -----------------------------------------------------------------------------------------------
  // the lr asked for (a number or auto), the one the run started with (auto's choice) and the final one (after a
  // schedule), each said once where they are the same
  function lrText(r) {
    var parts = [];
    if (r.lr_asked !== null && r.lr_asked !== undefined) parts.push("lr " + fmt(r.lr_asked));
    if (r.lr_chosen !== null && r.lr_chosen !== undefined && r.lr_chosen !== r.lr_asked)
      parts.push((parts.length ? "chose " : "lr ") + fmt(r.lr_chosen));
    var start = r.lr_chosen !== null && r.lr_chosen !== undefined ? r.lr_chosen : r.lr_asked;
    if (r.lr !== null && r.lr !== undefined && r.lr !== start)
      parts.push((parts.length ? "final " : "lr ") + fmt(r.lr));
    return parts.join(", ");
  }
  function statusBadge(status) { return el("span", { class: "status status-" + status, text: status }); }

  function runHeader(r) {
    var h = el("header", { class: "top" });
    h.appendChild(el("h1", null, el("span", { class: "run-name", text: r.name || r.id }), statusBadge(r.status)));
    h.appendChild(el("div", { class: "meta" },
      el("span", { class: "mono", text: "run " + r.id }), el("span", { text: "created " + r.created }),
      r.steps !== null ? el("span", { text: r.steps + " steps" }) : null,
      r.epochs ? el("span", { text: r.epochs + " epochs" }) : null,
      r.seconds !== null ? el("span", { text: fmt(r.seconds) + " s" }) : null,
      lrText(r) ? el("span", { class: "lr", text: lrText(r) }) : null));
    if (r.plan) h.appendChild(el("div", { class: "plan" }, el("b", { text: "Batch plan: " }), r.plan));
    if (r.lr_selection)
      h.appendChild(el("div", { class: "meta" }, "lr auto chose " + fmt(r.lr_selection.lr) +
        (r.lr_selection.reason ? ": " + r.lr_selection.reason : "")));
    if (r.error) h.appendChild(el("div", { class: "reason bad" }, el("b", { text: "Error: " }), r.error));
    if (r.stop_reason) {
      var bad = /diverg|non.finite|nan/i.test(r.stop_reason);
      h.appendChild(el("div", { class: "reason" + (bad ? " bad" : "") }, el("b", { text: "Stopped: " }),
        el("span", { class: "stop-reason", text: r.stop_reason })));
    } else if (r.status === "finished") {
      h.appendChild(el("div", { class: "meta" }, "Ran its whole budget."));
    }
    var finals = Object.keys(r.final || {});
    if (finals.length) {
      h.appendChild(el("div", { class: "finals" }, finals.map(function (k) {
        return el("div", null, el("small", { text: finalLabel(k) }), el("b", { text: finalValue(k, r.final[k]) }));
      })));
    }
    return h;
  }

  // a finding's card, clicked, zooms every step chart to the steps around it (double-click a chart to zoom out)
  function zoomTo(step) {
    var u = Object.keys(plots).map(function (k) { return plots[k]; })
      .filter(function (p) { return p.gdlabX === "step"; })[0];
    if (!u) return;
    var xs = u.data[0], first = xs[0], last = xs[xs.length - 1];
    var span = Math.max(20, (last - first) / 5);
    var low = Math.max(first, Math.min(step - span / 2, last - span));
    u.setScale("x", { min: low, max: Math.min(last, low + span) });  // the others follow (syncX)
  }

  // the charts on one x axis (the steps, or the comparison page's choice) zoom together: a zoom (or a double-click
  // back out) on one is applied to the others
  var syncing = false;
  function syncX(u) {
    if (syncing || data.kind === "sweep") return;
    syncing = true;
    try {
      Object.keys(plots).forEach(function (k) {
        var other = plots[k];
        if (other !== u && other.gdlabX === u.gdlabX &&
            (other.scales.x.min !== u.scales.x.min || other.scales.x.max !== u.scales.x.max))
          other.setScale("x", { min: u.scales.x.min, max: u.scales.x.max });
      });
    } finally {
      syncing = false;
    }
  }

  // a finding's card; a root cause's holds the consequences it explains, nested ("because of this"), each with
  // why its cause explains it and no remedy of its own (the story of gdlab.doctor.explain)
  function findingCard(f, who, because) {
    var evidence = Object.keys(f.evidence || {});
    var consequences = f.consequences || [];
    var card = el("article", { class: "card finding sev-" + f.severity, "data-code": f.code, "data-step": f.step,
                               title: typeof f.step === "number" ? "click: zoom the charts to step " + f.step : null },
      el("div", { class: "head" }, el("span", { class: "sev", text: f.severity }),
        el("span", { class: "code", text: f.code }),
        who ? el("span", { class: "meta", text: who }) : null,
        el("span", { class: "step", text: typeof f.step === "number" ? "first seen at step " + f.step : "" })),
      el("p", { class: "explanation", text: f.explanation || "" }),
      el("dl", null,
        evidence.length ? [el("dt", { text: "evidence" }), el("dd", { text: evidence.map(function (k) {
          return k + " " + fmt(f.evidence[k]); }).join("; ") })] : null,
        because ? [el("dt", { text: "why" }), el("dd", { text: because })] : null,
        f.remedy && !because ? [el("dt", { text: "remedy" }), el("dd", { class: "mono", text: remedyText(f.remedy) })]
          : null),
      consequences.length ? el("div", { class: "because" }, el("div", { class: "label", text: "because of this:" }),
        consequences.map(function (c) { return findingCard(c, "", c.because || " "); })) : null);
    if (because) card.classList.add("consequence");
    if (typeof f.step === "number") {
      card.classList.add("zooms");
      card.addEventListener("click", function (e) { e.stopPropagation(); zoomTo(f.step); });
    }
    return card;
  }

  function doctorSection(runs) {
    var section = el("section", null, el("h2", { text: "What the doctor found" }));
    var cards = el("div", { class: "cards" });
    var any = false;
    runs.forEach(function (r) {
      var causes = r.diagnosis ? r.diagnosis.causes : (r.findings || []);
      causes.forEach(function (f) { any = true; cards.appendChild(findingCard(f, runs.length > 1 ? r.label : "")); });
    });
    if (any) section.appendChild(cards);
    else section.appendChild(el("div", { class: "healthy", text: runs.every(function (r) { return r.settings && r.settings.doctor === false; })
      ? "The doctor was off for this run." : "No problems found." }));
    var events = [];
    runs.forEach(function (r) {
      var who = runs.length > 1 ? r.label + ": " : "";
      (r.remedies || []).forEach(function (m) {
        events.push({ step: m.step, cls: "ev-remedy", head: who + "remedy " + m.action,
                      body: (m.params ? " (" + pairs(m.params) + ")" : "") + (m.reason ? ": " + m.reason : "") });
      });
      (r.findings || []).forEach(function (f) {
        if (typeof f.step === "number")
          events.push({ step: f.step, cls: "ev-" + f.severity, head: who + f.severity + " " + f.code, body: "" });
      });
      if (r.steps !== null && r.status !== "running")
        events.push({ step: r.steps, cls: "ev-end", head: who + r.status, body: r.stop_reason ? ": " + r.stop_reason : "" });
    });
    if (events.some(function (e) { return e.cls !== "ev-end"; })) {
      events.sort(function (a, b) { return a.step - b.step; });
      section.appendChild(el("h2", { text: "Timeline: findings and the remedies applied" }));
      section.appendChild(el("ol", { class: "timeline" }, events.map(function (e) {
        return el("li", { class: e.cls }, el("span", { class: "when", text: "step " + e.step }),
          el("b", { text: e.head }), e.body);
      })));
    }
    root.appendChild(section);
  }

  function settingsGrid(settings) {
    return el("dl", { class: "settings" }, Object.keys(settings || {}).sort().map(function (k) {
      var v = settings[k];
      return el("div", null, el("dt", { text: k }), el("dd", { text: Array.isArray(v) ? "[" + fmt(v) + "]" : fmt(v) }));
    }));
  }

  function noSteps(r) {
    var why = r.status === "running" ? "it is still running and has not recorded its first steps yet"
      : r.status === "failed" ? "it failed before its first step" + (r.error ? " (see the error above)" : "")
      : "nothing was recorded";
    return el("div", { class: "empty no-steps" }, el("b", { text: "No steps recorded. " }),
      "This run has no training steps to draw: " + why + ".");
  }

  function renderRun() {
    var r = data.runs[0];
    root.appendChild(runHeader(r));
    var marks = marksOf(data.runs);
    if (!r.recorded_steps) root.appendChild(noSteps(r));
    doctorSection(data.runs);
    chartsSection(data.charts, marks);
    root.appendChild(el("section", null, el("h2", { text: "Settings" }), settingsGrid(r.settings)));
  }

  // -- several runs ------------------------------------------------------------------------------------------
  function renderRuns() {
    var runs = data.runs;
    root.appendChild(el("header", { class: "top" }, el("h1", { text: runs.length + " runs" }),
      el("div", { class: "meta" }, runs.map(function (r, i) {
        return el("span", null, el("b", { text: r.label, style: "color:" + PALETTE[i % PALETTE.length] }),
          " ", statusBadge(r.status));
      }))));
    var empty = runs.filter(function (r) { return !r.recorded_steps; });
    empty.forEach(function (r) { root.appendChild(el("div", { class: "empty no-steps" },
      el("b", { text: r.label + ": no steps recorded. " }), "It is " + r.status + " and has nothing to draw yet.")); });
    chartsSection(data.charts, marksOf(runs), { x: "step", smooth: 0.6, hidden: {} });
    var settings = {};
    runs.forEach(function (r) { Object.keys(r.settings || {}).forEach(function (k) { settings[k] = true; }); });
    var finals = {};
    runs.forEach(function (r) { Object.keys(r.final || {}).forEach(function (k) { finals[k] = true; }); });
    var columns = [{ key: "what", label: "" }].concat(runs.map(function (r, i) { return { key: "r" + i, label: r.label }; }));
    var rows = [];
    function row(what, values, numeric) {
      var o = { what: what };
      values.forEach(function (v, i) { o["r" + i] = numeric ? v : fmt(v); });
      o.differs = values.some(function (v) { return JSON.stringify(v) !== JSON.stringify(values[0]); });
      rows.push(o);
    }
    row("status", runs.map(function (r) { return r.status; }));
    row("stop reason", runs.map(function (r) { return r.stop_reason; }));
    row("steps", runs.map(function (r) { return r.steps; }), true);
    row("seconds", runs.map(function (r) { return r.seconds; }), true);
    row("batch plan", runs.map(function (r) { return r.plan; }));
    Object.keys(finals).sort().forEach(function (k) {
      row(finalLabel(k), runs.map(function (r) { return (r.final || {})[k]; }), true);
    });
    Object.keys(settings).sort().forEach(function (k) { row(k, runs.map(function (r) { return (r.settings || {})[k]; })); });
    root.appendChild(el("section", null, el("h2", { text: "Settings and final metrics side by side" }),
      el("p", { class: "key", text: "Highlighted rows differ between the runs." }),
      table(columns, rows, { rowClass: function (o) { return o.differs ? "differs" : null; } })));
    doctorSection(runs);
  }

  // -- a sweep or restarts -----------------------------------------------------------------------------------
  function renderSweep() {
    var s = data.sweep;
    var head = el("header", { class: "top" }, el("h1", null, el("span", { text: s.kind + " " + (s.name || s.id) })),
      el("div", { class: "meta" }, el("span", { class: "mono", text: s.id }), el("span", { text: "created " + s.created }),
        el("span", { text: s.members + " members" }), s.steps !== null ? el("span", { text: s.steps + " steps each" }) : null,
        s.seconds !== null ? el("span", { text: fmt(s.seconds) + " s" }) : null));
    var summary = Object.keys(s.summary || {});
    if (summary.length)
      head.appendChild(el("div", { class: "finals" }, summary.map(function (k) {
        return el("div", null, el("small", { text: k.replace(/_/g, " ") }), el("b", { text: fmt(s.summary[k]) }));
      })));
    root.appendChild(head);
    chartsSection(data.charts, []);
    var rows = data.table || [];
    var keys = data.columns || [];
    var best = null;
    rows.forEach(function (r) {
      var v = r[s.key];
      if (!r.diverged && typeof v === "number" && (best === null || v < best[s.key])) best = r;
    });
    root.appendChild(el("section", null, el("h2", { text: "Members (click a column to sort; the best is green)" }),
      table(keys.map(function (k) {
        return { key: k, label: k === "metric" ? "val accuracy" : k.replace(/_/g, " ") };
      }), rows,
        { sortable: true, rowClass: function (r) { return r === best ? "best" : r.diverged ? "diverged" : null; } })));
    var config = Object.keys(s.config || {});
    if (config.length)
      root.appendChild(el("section", null, el("h2", { text: "Settings" }), settingsGrid(s.config)));
  }

  // -- the index ---------------------------------------------------------------------------------------------
  function link(row, text) {
    return row.href ? el("a", { href: row.href, class: "run-link", text: text }) : el("span", { text: text });
  }
  function count(n, one, many) { return n + " " + (n === 1 ? one : many); }
  function renderIndex() {
    root.classList.add("wide");  // a table of many columns takes the window's width
    root.appendChild(el("header", { class: "top" }, el("h1", { text: data.title }),
      el("div", { class: "meta" }, el("span", { text: count(data.index.length, "run", "runs") }),
        el("span", { text: count(data.sweeps.length, "sweep or restarts study", "sweeps and restarts studies") }))));
    var columns = [
      { key: "id", label: "run", render: function (r) { return link(r, r.id); }, cls: "mono" },
      { key: "name", label: "name" },
      { key: "status", label: "status", render: function (r) { return statusBadge(r.status); } },
      { key: "created", label: "created" }, { key: "data", label: "data" }, { key: "model", label: "model" },
      { key: "optimizer", label: "optimizer" }, { key: "lr_asked", label: "lr asked" },
      { key: "lr_chosen", label: "lr chosen" }, { key: "lr_final", label: "lr final" }, { key: "steps", label: "steps" },
      { key: "train_loss", label: "train loss" }, { key: "val_loss", label: "val loss" },
      { key: "val_accuracy", label: "val acc", render: function (r) { return percent(r.val_accuracy); } },
      { key: "codes", label: "findings", cls: "mono prose" }, { key: "remedies", label: "remedies", cls: "prose" },
      { key: "stop_reason", label: "stop reason", cls: "prose" },
    ];
    var rows = data.index.map(function (r) {
      var o = Object.assign({}, r);
      o.codes = (r.findings || []).join(", ");
      return o;
    });
    root.appendChild(el("section", { class: "index" }, el("h2", { text: "Runs (click a column to sort)" }),
      rows.length ? table(columns, rows, { sortable: true }) : el("div", { class: "empty", text: "No runs yet." })));
    if (data.sweeps.length)
      root.appendChild(el("section", null, el("h2", { text: "Sweeps and restarts" }),
        table([{ key: "id", label: "sweep", render: function (r) { return link(r, r.id); }, cls: "mono" },
               { key: "name", label: "name" }, { key: "kind", label: "kind" }, { key: "created", label: "created" },
               { key: "members", label: "members" }, { key: "steps", label: "steps" }, { key: "seconds", label: "seconds" }],
          data.sweeps, { sortable: true })));
  }

  ({ run: renderRun, runs: renderRuns, sweep: renderSweep, index: renderIndex })[data.kind]();
  root.appendChild(el("footer", { text: "Written by gdlab " + data.version + " on " + data.generated +
    ". Charts: uPlot (MIT). Everything is inside this file." }));
  document.title = data.title + " - gdlab";
  state.ready = true;
})();
