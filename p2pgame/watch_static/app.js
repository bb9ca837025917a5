// p2pgame watch: polls /api/state about once a second and draws the run (p2pgame/watch.py
// says what the server reads).  The page's state is window.watch; the graph is window.cy.
(function () {
  "use strict";

  const POLL_MS = 1000;
  const RATE_WINDOW_S = 3; // delivered bytes/s over about the last 3 s of a peer's lines
  const VIRIDIS = ["#440154", "#3b528b", "#21918c", "#5ec962", "#fde725"];

  const S = {
    epoch: null, next: 0, scenario: null, status: "waiting", keys: [], peers: {},
    lines: {},        // peer -> [metrics line], ascending steps (a restart cuts back)
    summary: null, links: null, linksSource: null, idle: 0,
    selected: null, nodeKey: null, curveKey: null, edgeKey: "bytes_s",
    graphEpoch: null, plot: null, plotPeers: "", polls: 0, error: null,
  };
  window.watch = S;

  const $ = (id) => document.getElementById(id);

  // -- numbers and colours ---------------------------------------------------------
  function fmt(v) {
    if (v === null || v === undefined || Number.isNaN(v)) return "-";
    const a = Math.abs(v);
    if (Number.isInteger(v) && a < 1e12) return String(v);
    if (a >= 1e4 && a < 1e12) return String(Math.round(v));
    if (a !== 0 && (a >= 1e12 || a < 1e-3)) return v.toExponential(3);
    return v.toPrecision(4);
  }

  function viridis(x) { // x in [0, 1]
    x = Math.min(1, Math.max(0, x));
    const p = x * (VIRIDIS.length - 1), i = Math.min(VIRIDIS.length - 2, Math.floor(p));
    const f = p - i, a = hex(VIRIDIS[i]), b = hex(VIRIDIS[i + 1]);
    return "rgb(" + a.map((c, k) => Math.round(c + f * (b[k] - c))).join(",") + ")";
  }
  function hex(h) { return [1, 3, 5].map((k) => parseInt(h.slice(k, k + 2), 16)); }

  function scale(values) { // [min, max] of the finite values, or null
    const v = values.filter((x) => typeof x === "number" && Number.isFinite(x));
    if (!v.length) return null;
    return [Math.min(...v), Math.max(...v)];
  }

  // -- the lines -------------------------------------------------------------------
  function addLine(peer, line) {
    const arr = S.lines[peer] || (S.lines[peer] = []);
    const last = arr[arr.length - 1];
    if (last !== undefined && line.step !== undefined && last.step !== undefined) {
      if (line.step === last.step) { Object.assign(last, line); return; }
      if (line.step < last.step) { // a restarted or resumed peer: its steps again
        while (arr.length && arr[arr.length - 1].step >= line.step) arr.pop();
      }
    }
    arr.push(Object.assign({}, line));
  }

  function latest(peer, key) {
    const arr = S.lines[peer] || [];
    for (let k = arr.length - 1; k >= 0; k--) if (key in arr[k]) return arr[k][key];
    return null;
  }

  function peerIds() {
    const n = (S.scenario && S.scenario.n) || 0;
    const ids = new Set(Object.keys(S.peers).map(Number));
    for (let i = 0; i < n; i++) ids.add(i);
    return [...ids].sort((a, b) => a - b);
  }

  // -- the graph -------------------------------------------------------------------
  function currentEpoch() {
    const epochs = (S.scenario && S.scenario.epochs) || [];
    if (!epochs.length) return null;
    const steps = Object.values(S.peers).map((p) => p.step).filter((s) => s !== null);
    const at = steps.length ? Math.max(...steps) : 0;
    let cur = 0;
    epochs.forEach((e, k) => { if (e.start_step <= at) cur = k; });
    return cur;
  }

  function buildGraph() {
    const k = currentEpoch();
    if (k === null || k === S.graphEpoch && window.cy) return;
    S.graphEpoch = k;
    const edges = S.scenario.epochs[k].edges;
    const els = peerIds().map((i) => ({ data: { id: "p" + i, peer: i, label: String(i), color: "#bbb" } }));
    edges.forEach(([s, d]) => els.push({
      data: { id: "e" + s + "-" + d, source: "p" + s, target: "p" + d, src: s, dst: d, color: "#ccc",
        width: 1 } }));
    if (window.cy) window.cy.destroy();
    const n = els.length - edges.length;
    window.cy = cytoscape({
      container: $("graph"),
      elements: els,
      layout: n <= 200 ? { name: "circle", padding: 30 } : { name: "grid", padding: 20 },
      style: [
        { selector: "node", style: {
          label: "data(label)", "text-valign": "center", color: "#fff",
          "text-outline-width": 2, "text-outline-color": "#333", "font-size": 12,
          "background-color": "data(color)", width: 28, height: 28,
          "border-width": 1, "border-color": "#333" } },
        { selector: "node.failed", style: { "border-width": 4, "border-color": "#c62828",
          shape: "octagon" } },
        { selector: "node:selected", style: { "border-width": 4, "border-color": "#ff9800" } },
        { selector: "edge", style: {
          width: "data(width)", "line-color": "data(color)", "target-arrow-color": "data(color)",
          "target-arrow-shape": "triangle", "curve-style": "bezier", "arrow-scale": 0.8,
          opacity: 0.85 } },
      ],
    });
    window.cy.on("tap", "node", (ev) => selectPeer(ev.target.data("peer")));
    window.cy.on("mouseover", "edge", (ev) => {
      $("edge-note").textContent = edgeText(ev.target.data("src"), ev.target.data("dst"));
    });
    colourGraph();
  }

  function linkRow(s, d) {
    if (!S.links) return null;
    return S.links.find((r) => Number(r.src) === s && Number(r.dst) === d) || null;
  }

  function inDegree(d) {
    const k = S.graphEpoch;
    if (k === null) return 1;
    return S.scenario.epochs[k].edges.filter((e) => e[1] === d).length || 1;
  }

  function receivedRate(peer) { // bytes/s released by the peer's links, from its lines
    const arr = (S.lines[peer] || []).filter((l) => "comm/bytes_received" in l && "t" in l);
    if (arr.length < 2) return null;
    const last = arr[arr.length - 1];
    let k = arr.length - 2;
    while (k > 0 && last.t - arr[k].t < RATE_WINDOW_S) k--;
    const dt = last.t - arr[k].t;
    return dt > 0 ? (last["comm/bytes_received"] - arr[k]["comm/bytes_received"]) / dt : null;
  }

  function edgeValue(s, d) { // [value, where it comes from]
    const row = linkRow(s, d);
    const wall = S.summary && S.summary.wall_s;
    if (row) {
      if (S.edgeKey === "bytes_s") {
        const t = row.active_s > 0 ? row.active_s : wall;
        return [t > 0 ? row.delivered_bytes / t : null, S.linksSource];
      }
      if (S.edgeKey === "drop") {
        return [row.sent > 0 ? (row.dropped_loss + row.dropped_buffer) / row.sent : null,
          S.linksSource];
      }
      return [row.delay_mean_s, S.linksSource];
    }
    if (S.edgeKey === "bytes_s") {
      const r = receivedRate(d);
      return [r === null ? null : r / inDegree(d), "estimate"];
    }
    return [null, null];
  }

  function edgeText(s, d) {
    const [v, src] = edgeValue(s, d);
    const what = { bytes_s: "delivered bytes/s", drop: "drop rate", delay: "time on the link" };
    const from = src === "estimate" ? " (estimated from peer " + d + "'s comm/bytes_received)"
      : src ? " (" + src + ")" : "";
    return s + " \u2192 " + d + ": " + what[S.edgeKey] + " " + fmt(v) + from;
  }

  function colourGraph() {
    const cy = window.cy;
    if (!cy) return;
    const key = S.nodeKey;
    const nodeVals = {};
    cy.nodes().forEach((n) => { nodeVals[n.data("peer")] = key ? latest(n.data("peer"), key) : null; });
    const ns = scale(Object.values(nodeVals));
    const edgeVals = {};
    let source = null;
    cy.edges().forEach((e) => {
      const [v, src] = edgeValue(e.data("src"), e.data("dst"));
      edgeVals[e.id()] = v;
      if (src) source = src;
    });
    // Edge figures are rates and shares (never negative): scaled from 0, so that two
    // edges that differ by a percent do not look unlike.
    const em = scale(Object.values(edgeVals));
    const es = em && em[1] > 0 ? [0, em[1]] : em;
    cy.batch(() => {
      cy.nodes().forEach((n) => {
        const v = nodeVals[n.data("peer")];
        const col = v === null || !ns ? "#bbb"
          : viridis(ns[1] > ns[0] ? (v - ns[0]) / (ns[1] - ns[0]) : 0.5);
        n.data("color", col);
        n.toggleClass("failed", !!(S.peers[n.data("peer")] || {}).failed);
      });
      cy.edges().forEach((e) => {
        const v = edgeVals[e.id()];
        const x = v === null || !es ? null : es[1] > es[0] ? (v - es[0]) / (es[1] - es[0]) : 0.5;
        e.data("color", x === null ? "#ccc" : viridis(x));
        e.data("width", x === null ? 1 : 1 + 7 * x);
      });
    });
    const bar = (sc, what) => sc
      ? "<span>" + fmt(sc[0]) + "</span><span class='bar'></span><span>" + fmt(sc[1]) +
        "</span><span>" + escapeHtml(what) + "</span>"
      : "<span>" + escapeHtml(what) + ": no values yet</span>";
    const edgeWhat = { bytes_s: "delivered bytes/s", drop: "drop rate",
      delay: "time on the link (s)" }[S.edgeKey];
    $("legend").innerHTML = "<div>nodes " + bar(ns, key || "(no metric)") + "</div>" +
      "<div>edges " + bar(es, edgeWhat + " (also the width)") + "</div>";
    let note;
    if (source === "estimate") {
      note = "edges while the run goes: delivered bytes/s estimated from each receiver's " +
        "comm/bytes_received, split evenly over its in-edges; drop rates and times on " +
        "the links come with summary.json at the end";
    } else if (source) {
      note = "edges: the per-edge accounts of " + source;
    } else {
      note = S.edgeKey === "bytes_s" ? "edges: no metrics yet"
        : "edges: " + (S.edgeKey === "drop" ? "drop rates" : "times on the links") +
          " come with summary.json, when the run ends (no live per-edge accounts)";
    }
    $("edge-note").textContent = note;
  }

  // -- curves ----------------------------------------------------------------------
  function curveData(key) {
    const ids = peerIds().filter((i) => (S.lines[i] || []).some((l) => key in l && "step" in l));
    const tables = ids.map((i) => {
      const arr = S.lines[i].filter((l) => key in l && "step" in l);
      return [arr.map((l) => l.step), arr.map((l) => l[key])];
    });
    return { ids, tables };
  }

  function drawCurves() {
    const key = S.curveKey;
    const box = $("curves");
    if (!key) { box.textContent = "no metrics lines yet"; return; }
    const { ids, tables } = curveData(key);
    S.curvePoints = {};
    ids.forEach((i, k) => { S.curvePoints[i] = tables[k][0].length; });
    if (!ids.length) {
      if (S.plot) { S.plot.destroy(); S.plot = null; }
      box.textContent = "no values of " + key + " yet";
      return;
    }
    const data = tables.length === 1 ? tables[0] : uPlot.join(tables);
    const signature = key + "|" + ids.join(",");
    if (S.plot && S.plotPeers === signature) { S.plot.setData(data); return; }
    if (S.plot) S.plot.destroy();
    box.textContent = "";
    const series = [{ label: "step" }].concat(ids.map((i, k) => ({
      label: "peer " + i, stroke: viridis(ids.length > 1 ? k / (ids.length - 1) : 0.3),
      width: S.selected === i ? 3 : 1.5, spanGaps: true, points: { show: false },
    })));
    S.plot = new uPlot({
      width: Math.max(300, box.clientWidth || 500), height: 280, series,
      scales: { x: { time: false } },
      axes: [{ label: "step" }, { label: key, size: 70 }],
      legend: { show: ids.length <= 16 },
    }, data, box);
    S.plotPeers = signature;
  }

  // -- the selected peer -----------------------------------------------------------
  function selectPeer(i) {
    S.selected = i;
    if (window.cy) {
      window.cy.nodes().unselect();
      window.cy.$("#p" + i).select();
    }
    S.plotPeers = ""; // redraw the curves with this peer's line thicker
    drawPeer();
    drawCurves();
  }

  function drawPeer() {
    const i = S.selected;
    if (i === null) return;
    const p = S.peers[i] || {};
    const learner = S.scenario && S.scenario.learners && S.scenario.learners[i];
    $("peer-title").textContent = "peer " + i + (learner ? " (" + learner + ")" : "") +
      (p.failed ? ": " + p.failed : "");
    const sample = $("peer-sample");
    if (p.sample) {
      const img = sample.querySelector("img");
      if (!img || img.getAttribute("src") !== p.sample) {
        sample.innerHTML = "";
        const el = document.createElement("img");
        el.src = p.sample; el.alt = "samples of peer " + i;
        sample.appendChild(el);
      }
    } else {
      sample.textContent = "no sample grid yet (image learners write samples/peer-" + i +
        ".png after their last step)";
    }
    const rows = [];
    const seen = new Set();
    const arr = S.lines[i] || [];
    for (let k = arr.length - 1; k >= 0; k--) {
      for (const key of Object.keys(arr[k])) {
        if (!seen.has(key)) { seen.add(key); rows.push([key, arr[k][key]]); }
      }
    }
    rows.sort((a, b) => (a[0] === "step" ? -1 : b[0] === "step" ? 1 : a[0].localeCompare(b[0])));
    const fin = S.summary && S.summary.peers && S.summary.peers[String(i)];
    let html = rows.map(([k, v]) => "<tr data-key='" + escapeHtml(k) + "'><td>" +
      escapeHtml(k) + "</td><td class='v'>" + fmt(v) + "</td></tr>").join("");
    $("peer-latest").innerHTML = html;
    const box = $("peer-final");
    if (fin) {
      const open = box.querySelector("details") && box.querySelector("details").open;
      box.innerHTML = "<details" + (open ? " open" : "") + "><summary>final numbers " +
        "(summary.json)</summary><table>" + Object.keys(fin).sort().map((k) => "<tr><td>" +
        escapeHtml(k) + "</td><td class='v'>" + fmt(fin[k]) + "</td></tr>").join("") +
        "</table></details>";
    } else {
      box.innerHTML = "";
    }
  }

  function escapeHtml(s) {
    return String(s).replace(/[&<>'"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;",
      "'": "&#39;", '"': "&quot;" })[c]);
  }

  // -- header and dropdowns --------------------------------------------------------
  function fillSelect(sel, keys, current, preferred) {
    const have = [...sel.options].map((o) => o.value).join("\n");
    if (have !== keys.join("\n")) {
      sel.innerHTML = keys.map((k) => "<option>" + escapeHtml(k) + "</option>").join("");
    }
    if (current && keys.includes(current)) { sel.value = current; return current; }
    const pick = preferred.find((p) => keys.includes(p)) || keys.find((k) => k !== "t") || null;
    if (pick) sel.value = pick;
    return pick;
  }

  function drawHeader() {
    const sc = S.scenario || {};
    $("run-name").textContent = sc.name || "p2pgame watch";
    const st = $("status");
    st.textContent = S.status;
    st.className = "status " + S.status;
    const bits = [];
    if (sc.n) bits.push(sc.n + " peers");
    if (sc.graph && sc.graph.length) bits.push("graph " + sc.graph.join(" \u2192 "));
    if (sc.mode) bits.push(sc.mode);
    if (sc.exchange) bits.push("exchange " + sc.exchange);
    if (sc.learner) bits.push("learner " + sc.learner);
    if (S.runDir) bits.push("run folder " + S.runDir.split("/").filter(Boolean).pop());
    $("run-info").textContent = bits.join(" \u00b7 ");
    $("run-info").title = S.runDir || "";
    const steps = sc.steps || 0;
    const ids = peerIds();
    const done = ids.map((i) => {
      const s = (S.peers[i] || {}).step;
      return s === null || s === undefined ? 0 : Math.min(1, (s + 1) / (steps || 1));
    });
    let frac = done.length ? done.reduce((a, b) => a + b, 0) / done.length : 0;
    if (S.status === "finished") frac = 1;
    $("progress-bar").style.width = (100 * frac).toFixed(1) + "%";
    const slow = ids.length ? Math.min(...ids.map((i) => (S.peers[i] || {}).step ?? -1)) : -1;
    let text = "";
    if (S.status === "waiting") text = "waiting for the run folder (the run is being prepared)";
    else {
      text = (100 * frac).toFixed(0) + " % of " + steps + " steps per peer; slowest peer at step " +
        (slow < 0 ? "-" : slow);
      if (S.summary && S.summary.wall_s) text += "; wall " + fmt(S.summary.wall_s) + " s";
      else if (S.status === "running" && S.idle > 10) text += "; no new metrics line for " +
        Math.round(S.idle) + " s";
    }
    if (S.error) text += " \u00b7 " + S.error;
    $("progress-text").textContent = text;
    const failed = ids.filter((i) => (S.peers[i] || {}).failed);
    $("failed").textContent = failed.length ? "failed: " + failed.map((i) =>
      "peer " + i + " (" + S.peers[i].failed + ")").join("; ") : "";
    $("footer").textContent = "polls " + S.polls + " \u00b7 metrics lines " + S.next +
      " \u00b7 served from 127.0.0.1";
  }

  function redraw() {
    S.nodeKey = fillSelect($("node-metric"), S.keys, S.nodeKey,
      ["eval/ne_max_abs", "eval/tv_to_ne", "eval/fid_all", "comm/bytes_received"]);
    S.curveKey = fillSelect($("curve-metric"), S.keys, S.curveKey,
      ["eval/ne_max_abs", "eval/tv_to_ne", "eval/fid_all"]);
    drawHeader();
    buildGraph();
    colourGraph();
    drawCurves();
    drawPeer();
  }

  // -- polling ---------------------------------------------------------------------
  function take(st) {
    if (st.full) {
      S.lines = {}; S.scenario = st.scenario; S.graphEpoch = null; S.plotPeers = "";
    }
    S.epoch = st.epoch;
    st.lines.forEach(([peer, line]) => addLine(peer, line));
    S.next = st.next;
    S.status = st.status; S.keys = st.keys; S.peers = st.peers; S.summary = st.summary;
    S.links = st.links; S.linksSource = st.links_source; S.idle = st.idle_s;
    S.runDir = st.run_dir;
    return st.more;
  }

  async function poll() {
    let again = POLL_MS;
    try {
      const url = "/api/state?since=" + S.next + (S.epoch === null ? "" : "&epoch=" + S.epoch);
      const r = await fetch(url, { cache: "no-store" });
      if (!r.ok) throw new Error("HTTP " + r.status);
      const more = take(await r.json());
      S.polls += 1;
      S.error = null;
      redraw();
      if (more) again = 0;
    } catch (e) {
      S.error = "the server does not answer (" + e.message + ")";
      drawHeader();
    }
    setTimeout(poll, again);
  }

  $("node-metric").addEventListener("change", (e) => { S.nodeKey = e.target.value; colourGraph(); });
  $("edge-metric").addEventListener("change", (e) => { S.edgeKey = e.target.value; colourGraph(); });
  $("curve-metric").addEventListener("change", (e) => { S.curveKey = e.target.value; drawCurves(); });
  S.selectPeer = selectPeer;
  poll();
})();
