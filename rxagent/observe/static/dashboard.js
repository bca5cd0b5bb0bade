// The rxagent live dashboard: no build step, no dependencies, nothing fetched but this
// server's own api/ (it works offline).
//
// Data: api/events (server-sent events, `event: snapshot`, at most two a second) and,
// when that stream is silent or unavailable, api/snapshot once a second; the state
// browser reads api/state/{store}. Rates are computed here from successive snapshots.
//
// Cost: work is per snapshot, never per event, so it is the same at 10 events/s and at
// 10,000. Snapshots only mark the page dirty; it renders at most once per animation
// frame, updates existing DOM nodes in place (text only when it changed) and caps every
// list. Every value from the server reaches the page through textContent or
// setAttribute, never as markup.

const SVG_NS = "http://www.w3.org/2000/svg";
const HISTORY_SECONDS = 60;
const RATE_WINDOW = 1.0; // seconds a rate is measured over (at least)
const MAX_DEAD_LETTERS = 50;
const MAX_SUPPRESSIONS = 30;
const MAX_STATE_ROWS = 100;
const MAX_ACTIVATIONS = 200;
const MAX_LAG_ROWS = 64;
const SILENCE_MS = 1500; // poll api/snapshot when the event stream says nothing this long

const query = new URLSearchParams(window.location.search);
const token = query.get("token");

/** A URL of this server's API relative to the page, carrying the page's ?token= if any. */
function apiUrl(path, params = {}) {
  const url = new URL(path, document.baseURI);
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, String(value));
  }
  if (token) url.searchParams.set("token", token);
  return url.toString();
}

// -- DOM helpers (text only: nothing here parses markup) ---------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "text") node.textContent = value;
    else if (name === "class") node.className = value;
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

function svgEl(tag, attrs = {}) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "text") node.textContent = value;
    else node.setAttribute(name, String(value));
  }
  return node;
}

function setText(node, value) {
  const text = value === null || value === undefined ? "" : String(value);
  if (node.textContent !== text) node.textContent = text;
}

function setAttr(node, name, value) {
  const text = String(value);
  if (node.getAttribute(name) !== text) node.setAttribute(name, text);
}

function setClass(node, name) {
  if (node.getAttribute("class") !== name) node.setAttribute("class", name);
}

function show(node, visible) {
  if (node.hidden === visible) node.hidden = !visible;
}

// -- formatting ---------------------------------------------------------------------------

const numbers = new Intl.NumberFormat("en-US");

function fmtInt(n) {
  if (typeof n === "number" && Number.isFinite(n)) return numbers.format(Math.round(n));
  return n === null || n === undefined ? "" : String(n);
}

/** A count short enough for a graph node: 18,540 / 123.4k / 12.3M. */
function fmtShort(n) {
  if (typeof n !== "number" || !Number.isFinite(n)) return n === null || n === undefined ? "" : String(n);
  if (Math.abs(n) >= 1e7) return `${(n / 1e6).toFixed(1)}M`;
  if (Math.abs(n) >= 1e5) return `${(n / 1e3).toFixed(1)}k`;
  return numbers.format(Math.round(n));
}

function fmtRate(r) {
  if (typeof r !== "number" || !Number.isFinite(r)) return "–";
  if (r >= 1e6) return `${(r / 1e6).toFixed(1)}M`;
  if (r >= 1e4) return `${(r / 1e3).toFixed(1)}k`;
  if (r >= 100) return numbers.format(Math.round(r));
  return r.toFixed(1);
}

function fmtSeconds(s) {
  if (typeof s !== "number" || !Number.isFinite(s)) return "";
  const a = Math.abs(s);
  if (a < 0.001) return `${(s * 1e6).toFixed(0)} µs`;
  if (a < 1) return `${(s * 1e3).toFixed(a < 0.01 ? 2 : 0)} ms`;
  if (a < 120) return `${s.toFixed(1)} s`;
  if (a < 7200) return `${(s / 60).toFixed(1)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

function fmtBytes(n) {
  if (typeof n !== "number" || !Number.isFinite(n)) return "";
  if (n < 1024) return `${n} B`;
  if (n < 1 << 20) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1 << 30) return `${(n / (1 << 20)).toFixed(1)} MiB`;
  return `${(n / (1 << 30)).toFixed(1)} GiB`;
}

function isEpoch(t) {
  return typeof t === "number" && t > 1e9;
}

function fmtClock(epoch) {
  if (!isEpoch(epoch)) return epoch === null || epoch === undefined ? "" : String(epoch);
  const d = new Date(epoch * 1000);
  const pad = (n) => String(n).padStart(2, "0");
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** "3.2 s ago" for an epoch time, relative to the snapshot's time. */
function fmtAgo(t, now) {
  if (!isEpoch(t) || !isEpoch(now)) return fmtClock(t);
  return `${fmtSeconds(Math.max(0, now - t))} ago`;
}

function compact(value, max = 160) {
  let text;
  if (typeof value === "string") text = value;
  else {
    try {
      text = JSON.stringify(value);
    } catch {
      text = String(value);
    }
    if (text === undefined) text = String(value);
  }
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

function clip(text, max) {
  const s = String(text ?? "");
  return s.length > max ? `${s.slice(0, max - 1)}…` : s;
}

/** Text cut in the middle: an error's type and its end (the reason) both stay. */
function clipMiddle(text, max) {
  const s = String(text ?? "");
  if (s.length <= max) return s;
  const head = Math.floor(max * 0.4);
  return `${s.slice(0, head)}…${s.slice(s.length - (max - head - 1))}`;
}

const HEALTH_CLASS = {
  connected: "badge badge-ok",
  running: "badge badge-ok",
  stopped: "badge badge-muted",
  completed: "badge badge-muted",
  created: "badge badge-muted",
  connecting: "badge badge-wait",
  starting: "badge badge-wait",
  draining: "badge badge-wait",
  reconnecting: "badge badge-warn",
  lost_assignment: "badge badge-warn",
  outage: "badge badge-bad",
  auth_refused: "badge badge-bad",
  failed: "badge badge-bad",
};

function badgeClass(state) {
  const key = String(state ?? "").toLowerCase().replace(/^.*\./, "");
  return HEALTH_CLASS[key] ?? "badge badge-muted";
}

// -- rates from successive snapshots -------------------------------------------------------

/** One counter's samples and the rates measured from them (the last HISTORY_SECONDS). */
class Series {
  constructor() {
    this.samples = []; // [time, count]
    this.rates = []; // [time, events per second]
  }

  add(t, count) {
    if (typeof count !== "number" || !Number.isFinite(count)) return;
    const s = this.samples;
    if (s.length && t <= s[s.length - 1][0]) return; // the same snapshot again
    if (s.length && count < s[s.length - 1][1]) {
      s.length = 0; // the counter went back: a restart
      this.rates.length = 0;
    }
    s.push([t, count]);
    let j = s.length - 2;
    while (j > 0 && t - s[j][0] < RATE_WINDOW) j -= 1;
    if (j >= 0) this.rates.push([t, (count - s[j][1]) / (t - s[j][0])]);
    while (s.length > 2 && s[0][0] < t - HISTORY_SECONDS - RATE_WINDOW) s.shift();
    while (this.rates.length && this.rates[0][0] < t - HISTORY_SECONDS) this.rates.shift();
  }

  get rate() {
    const r = this.rates;
    return r.length ? r[r.length - 1][1] : 0;
  }
}

const series = new Map();

function seriesOf(pipeline, stage, which) {
  const key = `${pipeline}\u0001${stage}\u0001${which}`;
  let found = series.get(key);
  if (!found) {
    found = new Series();
    series.set(key, found);
  }
  return found;
}

const SOURCE = "\u0000source";

function record(snap, t) {
  for (const [name, p] of Object.entries(snap.pipelines ?? {})) {
    seriesOf(name, SOURCE, "out").add(t, p.flow?.emitted ?? p.source?.emitted);
    for (const [stage, m] of Object.entries(p.stages ?? {})) {
      seriesOf(name, stage, "in").add(t, m.in);
      seriesOf(name, stage, "out").add(t, m.out);
    }
  }
}

// -- sparklines ---------------------------------------------------------------------------

class Sparkline {
  constructor(width, height, { label = false, testid = "sparkline" } = {}) {
    this.width = width;
    this.height = height;
    this.svg = svgEl("svg", {
      class: label ? "spark spark-big" : "spark",
      width,
      height,
      viewBox: `0 0 ${width} ${height}`,
      "data-testid": testid,
      role: "img",
      "aria-label": "events per second, last 60 seconds",
    });
    this.area = svgEl("path", { class: "spark-area", d: "" });
    this.line = svgEl("polyline", { class: "spark-line", points: "" });
    this.svg.append(this.area, this.line);
    this.label = null;
    if (label) {
      this.label = svgEl("text", { class: "spark-label", x: width - 2, y: 10, "text-anchor": "end" });
      this.svg.append(this.label);
    }
  }

  update(rates, now) {
    const { width: w, height: h } = this;
    let max = 0;
    for (const [, r] of rates) if (r > max) max = r;
    const top = this.label ? 13 : 2;
    const scale = max > 0 ? (h - top - 1) / max : 0;
    const points = [];
    for (const [t, r] of rates) {
      const x = w - ((now - t) / HISTORY_SECONDS) * w;
      if (x < 0) continue;
      points.push(`${x.toFixed(1)},${(h - 1 - Math.max(0, r) * scale).toFixed(1)}`);
    }
    const joined = points.join(" ");
    setAttr(this.line, "points", joined);
    if (points.length > 1) {
      const first = points[0].split(",")[0];
      const last = points[points.length - 1].split(",")[0];
      setAttr(this.area, "d", `M${first},${h} L${joined.replaceAll(" ", " L")} L${last},${h} Z`);
    } else setAttr(this.area, "d", "");
    if (this.label) setText(this.label, max > 0 ? `max ${fmtRate(max)}/s` : "idle");
  }
}

// -- keyed tables updated in place ----------------------------------------------------------

/**
 * Make tbody's rows match items (in order, at most cap): rows are kept per key and
 * reused, cells are rewritten only when their text changed. A cell is a value, or
 * {text, cls, title, testid}, or a Sparkline.
 */
function syncRows(
  tbody,
  items,
  keyOf,
  cellsOf,
  { cap = Infinity, testid = "row", columns = [], rowTag = "tr", cellTag = "td" } = {},
) {
  if (!tbody._rows) tbody._rows = new Map();
  const rows = tbody._rows;
  const seen = new Set();
  let previous = null;
  let count = 0;
  for (const item of items) {
    if (count >= cap) break;
    let key = String(keyOf(item));
    while (seen.has(key)) key += "\u0002"; // identical items stay distinct rows
    seen.add(key);
    count += 1;
    const cells = cellsOf(item);
    let tr = rows.get(key);
    if (!tr) {
      tr = el(rowTag, { "data-testid": testid, "data-key": key });
      cells.forEach((cell, i) => {
        const td = el(cellTag);
        if (columns[i]) td.setAttribute("data-col", columns[i]);
        if (cell instanceof Sparkline) td.append(cell.svg);
        tr.append(td);
      });
      rows.set(key, tr);
    }
    cells.forEach((cell, i) => {
      const td = tr.children[i];
      if (cell instanceof Sparkline) return;
      if (cell !== null && typeof cell === "object") {
        setText(td, cell.text);
        setClass(td, cell.cls ?? "");
        if (cell.title !== undefined) setAttr(td, "title", cell.title);
      } else setText(td, cell);
    });
    const expected = previous ? previous.nextSibling : tbody.firstChild;
    if (expected !== tr) tbody.insertBefore(tr, expected);
    previous = tr;
  }
  for (const [key, tr] of rows) {
    if (!seen.has(key)) {
      tr.remove();
      rows.delete(key);
    }
  }
}

// -- the pipeline graph ---------------------------------------------------------------------

const NODE_W = 146;
const NODE_H = 80;
const GAP_X = 56;
const ROW_H = NODE_H + 46;
const PAD = 12;
let markerCount = 0;

/** The graph the server sent, or one made from the stages when it sent none. */
function graphOf(p) {
  const g = p.graph;
  if (g && Array.isArray(g.nodes) && g.nodes.length) return g;
  const sourceId = p.source?.name ?? "source";
  const sinks = Object.keys(p.sinks ?? {});
  const nodes = [{ id: sourceId, role: "source", kind: p.source?.kind ?? "source" }];
  const edges = [];
  let last = sourceId;
  for (const stage of Object.keys(p.stages ?? {})) {
    if (sinks.includes(stage)) continue;
    nodes.push({ id: stage, role: "operator", kind: "" });
    edges.push({ from: last, to: stage });
    last = stage;
  }
  for (const sink of sinks) {
    nodes.push({ id: sink, role: "sink", kind: p.sinks[sink]?.kind ?? "sink" });
    edges.push({ from: last, to: sink });
  }
  return { nodes, edges };
}

class GraphView {
  constructor(svg) {
    this.svg = svg;
    this.signature = null;
    this.nodes = new Map(); // id -> {node, g, rate, counts, leak, leakText, credit}
    this.edges = []; // {edge, g, path, label}
  }

  layout(graph) {
    const signature = JSON.stringify([graph.nodes, graph.edges]);
    if (signature === this.signature) return;
    this.signature = signature;
    this.svg.replaceChildren();
    this.nodes.clear();
    this.edges = [];

    const ids = graph.nodes.map((n) => String(n.id));
    const layer = new Map(ids.map((id) => [id, 0]));
    // longest path from a source; a node seen more often than there are nodes is a loop
    for (let pass = 0; pass < ids.length; pass += 1) {
      let moved = false;
      for (const e of graph.edges) {
        const from = layer.get(String(e.from));
        const to = layer.get(String(e.to));
        if (from === undefined || to === undefined) continue;
        if (to < from + 1) {
          layer.set(String(e.to), from + 1);
          moved = true;
        }
      }
      if (!moved) break;
    }
    const columns = [];
    const position = new Map();
    for (const n of graph.nodes) {
      const col = Math.min(layer.get(String(n.id)), ids.length);
      columns[col] ??= [];
      const row = columns[col].length;
      columns[col].push(n);
      position.set(String(n.id), { x: PAD + col * (NODE_W + GAP_X), y: PAD + row * ROW_H });
    }
    const rows = Math.max(1, ...columns.filter(Boolean).map((c) => c.length));
    const width = PAD * 2 + columns.length * (NODE_W + GAP_X) - GAP_X;
    const height = PAD + rows * ROW_H - 10;
    setAttr(this.svg, "viewBox", `0 0 ${width} ${height}`);
    setAttr(this.svg, "width", width);
    setAttr(this.svg, "height", height);
    // up to about eight columns the graph shrinks to fit its panel; longer ones scroll
    setClass(this.svg, columns.length <= 8 ? "graph fit" : "graph");

    markerCount += 1;
    const marker = `arrow-${markerCount}`;
    const defs = svgEl("defs");
    const m = svgEl("marker", {
      id: marker,
      viewBox: "0 0 10 10",
      refX: 9,
      refY: 5,
      markerUnits: "userSpaceOnUse",
      markerWidth: 9,
      markerHeight: 9,
      orient: "auto-start-reverse",
    });
    m.append(svgEl("path", { d: "M0,0 L10,5 L0,10 z", class: "arrow" }));
    defs.append(m);
    this.svg.append(defs);

    for (const e of graph.edges) {
      const a = position.get(String(e.from));
      const b = position.get(String(e.to));
      if (!a || !b) continue;
      const x1 = a.x + NODE_W;
      const y1 = a.y + NODE_H / 2;
      const x2 = b.x - 2;
      const y2 = b.y + NODE_H / 2;
      const mid = (x1 + x2) / 2;
      const g = svgEl("g", {
        class: "edge",
        "data-testid": "graph-edge",
        "data-from": String(e.from),
        "data-to": String(e.to),
      });
      const path = svgEl("path", {
        d: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}`,
        "marker-end": `url(#${marker})`,
      });
      const label = svgEl("text", {
        class: "edge-label",
        "data-testid": "edge-label",
        x: mid,
        y: (y1 + y2) / 2 - 6,
        "text-anchor": "middle",
      });
      g.append(path, label);
      this.svg.append(g);
      this.edges.push({ edge: e, path, label });
    }

    for (const n of graph.nodes) {
      const id = String(n.id);
      const { x, y } = position.get(id);
      const role = ["source", "operator", "sink"].includes(n.role) ? n.role : "operator";
      const g = svgEl("g", {
        class: `node role-${role}`,
        "data-testid": "graph-node",
        "data-node": id,
        "data-role": role,
        transform: `translate(${x},${y})`,
      });
      const title = svgEl("title", { text: `${id} (${role}${n.kind ? `: ${n.kind}` : ""})` });
      const rect = svgEl("rect", { width: NODE_W, height: NODE_H, rx: 7 });
      // the kind when it says more than the name and the role, and there is room for it
      const kindText = n.kind && n.kind !== id && n.kind !== role && !id.startsWith(`${n.kind}:`) ? String(n.kind) : "";
      const room = kindText && id.length + kindText.length <= 24;
      const name = svgEl("text", { class: "node-name", x: 9, y: 17, text: clip(id, room ? 24 - kindText.length : 21) });
      const kind = svgEl("text", {
        class: "node-kind",
        x: NODE_W - 8,
        y: 17,
        "text-anchor": "end",
        text: room ? kindText : "",
      });
      const rate = svgEl("text", { class: "node-rate", "data-testid": "node-rate", x: 9, y: 39 });
      const counts = svgEl("text", { class: "node-counts", "data-testid": "node-counts", x: 9, y: 57 });
      const aside = svgEl("text", { class: "node-aside", "data-testid": "node-aside", x: 9, y: 71 });
      g.append(title, rect, name, kind, rate, counts, aside);
      let credit = null;
      if (role === "source") {
        const track = svgEl("rect", { class: "credit-track", x: 0, y: NODE_H - 4, width: NODE_W, height: 4, rx: 2 });
        credit = svgEl("rect", { class: "credit-bar", "data-testid": "credit-bar", x: 0, y: NODE_H - 4, width: 0, height: 4, rx: 2 });
        g.append(track, credit);
      }
      const leak = svgEl("g", { class: "leak", "data-testid": "edge-drops", visibility: "hidden" });
      const leakLine = svgEl("path", { d: `M${NODE_W / 2},${NODE_H} L${NODE_W / 2},${NODE_H + 22}` });
      const leakText = svgEl("text", { x: NODE_W / 2 + 6, y: NODE_H + 20 });
      leak.append(leakLine, leakText);
      g.append(leak);
      this.svg.append(g);
      this.nodes.set(id, { node: n, role, rate, counts, aside, leak, leakText, credit });
    }
  }

  update(name, p) {
    this.layout(graphOf(p));
    const flow = p.flow ?? {};
    const stages = p.stages ?? {};
    const sinks = p.sinks ?? {};
    const outRate = new Map();
    for (const [id, view] of this.nodes) {
      if (view.role === "source") {
        const r = seriesOf(name, SOURCE, "out").rate;
        outRate.set(id, r);
        setText(view.rate, `${fmtRate(r)}/s`);
        const cap = flow.capacity ?? 0;
        const inFlight = flow.in_flight ?? 0;
        setText(view.counts, `out ${fmtShort(flow.emitted ?? p.source?.emitted ?? 0)}`);
        setText(view.aside, `in flight ${fmtShort(inFlight)} / credit ${fmtShort(cap)}`);
        if (view.credit) setAttr(view.credit, "width", cap > 0 ? ((NODE_W * Math.min(inFlight, cap)) / cap).toFixed(1) : 0);
        // a source's own stage (decoding its messages) shares its name
        const own = stages[id] ?? {};
        const dead = (p.source?.dead_lettered ?? 0) + (own.dead_lettered ?? 0);
        const dropped = (p.source?.dropped ?? 0) + (own.dropped ?? 0);
        this.leak(view, dropped, dead);
        continue;
      }
      const m = stages[id] ?? {};
      const rIn = seriesOf(name, id, "in").rate;
      outRate.set(id, seriesOf(name, id, "out").rate);
      setText(view.rate, `${fmtRate(rIn)}/s`);
      const sink = sinks[id] ?? {};
      setText(
        view.counts,
        view.role === "sink" ? `in ${fmtShort(m.in ?? 0)}` : `in ${fmtShort(m.in ?? 0)} · out ${fmtShort(m.out ?? 0)}`,
      );
      const latency = p.latency?.[id];
      let aside = "";
      if ("running" in sink) aside = `busy ${fmtShort((sink.running ?? 0) + (sink.queued ?? 0))}`;
      if (typeof latency?.p50 === "number") aside += `${aside ? " · " : ""}p50 ${fmtSeconds(latency.p50)}`;
      setText(view.aside, aside);
      this.leak(view, m.dropped ?? 0, m.dead_lettered ?? 0);
    }
    for (const { edge, path, label } of this.edges) {
      const r = outRate.get(String(edge.from)) ?? 0;
      setText(label, `${fmtRate(r)}/s`);
      setAttr(path, "stroke-width", (1.5 + Math.min(4, Math.log10(1 + Math.max(0, r)))).toFixed(1));
      setClass(path, r > 0 ? "edge-path live" : "edge-path");
    }
  }

  leak(view, dropped, dead) {
    const parts = [];
    if (dropped) parts.push(`${fmtInt(dropped)} dropped`);
    if (dead) parts.push(`${fmtInt(dead)} dead`);
    setAttr(view.leak, "visibility", parts.length ? "visible" : "hidden");
    setAttr(view.leak, "class", dead ? "leak leak-dead" : "leak");
    setText(view.leakText, parts.join(" · "));
  }
}

// -- one pipeline's panel ---------------------------------------------------------------------

const STAGE_FIELDS = new Set(["name", "in", "out", "dropped", "dead_lettered", "errors", "last_error"]);

/** Per-partition Kafka lag as [[partition, lag]] (lag null: not known yet), from the
 * source's partition_lag ({"topic/partition": messages}) and its assignment. */
function partitionLag(source) {
  const found = [];
  for (const name of ["partition_lag", "lag_by_partition", "lag"]) {
    const value = source?.[name];
    if (value && typeof value === "object" && !Array.isArray(value)) {
      found.push(...Object.entries(value));
      break;
    }
  }
  const known = new Set(found.map(([partition]) => partition));
  for (const partition of Array.isArray(source?.assignment) ? source.assignment : []) {
    if (!known.has(String(partition))) found.push([String(partition), null]);
  }
  return found;
}

class PipelineView {
  constructor(name) {
    this.name = name;
    this.root = el("section", { class: "panel pipeline", "data-testid": "pipeline", "data-pipeline": name });
    this.title = el("span", { class: "pipeline-name", text: name });
    this.state = el("span", { class: "badge", "data-testid": "pipeline-state" });
    this.summary = el("div", { class: "summary muted", "data-testid": "pipeline-summary" });
    this.chart = new Sparkline(260, 46, { label: true, testid: "rate-chart" });
    const head = el(
      "div",
      { class: "pipeline-head" },
      el("div", {}, el("h2", {}, this.title, " ", this.state), this.summary),
      this.chart.svg,
    );
    this.error = el("div", { class: "pipeline-error", "data-testid": "pipeline-error" });
    this.error.hidden = true;
    this.graphSvg = svgEl("svg", { class: "graph", "data-testid": "graph", role: "img", "aria-label": `graph of ${name}` });
    this.graph = new GraphView(this.graphSvg);

    this.stageRows = el("tbody");
    this.stageSparks = new Map();
    const stages = el(
      "table",
      { class: "data", "data-testid": "stages" },
      el(
        "thead",
        {},
        el(
          "tr",
          {},
          ...["stage", "in", "out", "rate/s", "last 60 s", "dropped", "dead letters", "errors", "in flight", "details", "last error"].map(
            (h, i) => el("th", { class: i >= 1 && i <= 8 && i !== 4 ? "num" : "", text: h }),
          ),
        ),
      ),
      this.stageRows,
    );

    this.sourceHealth = el("span", { class: "badge", "data-testid": "source-health" });
    this.sourceTitle = el("span", { class: "source-name" });
    this.sourceFields = el("tbody");
    this.lagRows = el("tbody");
    this.lagTable = el(
      "table",
      { class: "data lag", "data-testid": "source-lag" },
      el("thead", {}, el("tr", {}, el("th", { text: "partition" }), el("th", { class: "num", text: "lag" }), el("th"))),
      this.lagRows,
    );
    this.lagTable.hidden = true;
    const source = el(
      "div",
      { class: "source", "data-testid": "source" },
      el("h3", {}, "Source ", this.sourceTitle, " ", this.sourceHealth),
      el("table", { class: "fields" }, this.sourceFields),
      this.lagTable,
    );

    this.suppressionTotals = el("div", { class: "chips", "data-testid": "suppression-totals" });
    this.suppressionRows = el("tbody");
    this.suppressions = el(
      "div",
      { class: "suppressions", "data-testid": "suppressions" },
      el("h3", {}, "Held back ", el("span", { class: "muted", text: "(why didn't it fire?)" })),
      this.suppressionTotals,
      el(
        "table",
        { class: "data" },
        el(
          "thead",
          {},
          el(
            "tr",
            {},
            ...["stage", "key", "reason", "count", "first", "last", "eligible"].map((h) =>
              el("th", { class: h === "count" ? "num" : "", text: h }),
            ),
          ),
        ),
        this.suppressionRows,
      ),
    );
    this.suppressionsEmpty = el("p", { class: "muted small", text: "nothing held back" });
    this.suppressions.append(this.suppressionsEmpty);

    this.root.append(
      head,
      this.error,
      el("div", { class: "graph-wrap" }, this.graphSvg),
      el(
        "div",
        { class: "pipeline-body" },
        el("div", { class: "stages" }, el("h3", { text: "Stages" }), stages),
        source,
      ),
      this.suppressions,
    );
  }

  sparkFor(stage) {
    let spark = this.stageSparks.get(stage);
    if (!spark) {
      spark = new Sparkline(96, 20);
      this.stageSparks.set(stage, spark);
    }
    return spark;
  }

  update(p, now) {
    const name = this.name;
    const flow = p.flow ?? {};
    const src = p.source ?? {};
    setText(this.state, p.state ?? "");
    setClass(this.state, badgeClass(p.state));
    const sourceRate = seriesOf(name, SOURCE, "out");
    const parts = [
      `${fmtInt(flow.emitted ?? 0)} events`,
      `${fmtRate(sourceRate.rate)}/s`,
      `in flight ${fmtInt(flow.in_flight ?? 0)} / credit ${fmtInt(flow.capacity ?? 0)}`,
    ];
    if (flow.peak_in_flight) parts.push(`peak ${fmtInt(flow.peak_in_flight)}`);
    if (flow.capacity_bytes) parts.push(`${fmtBytes(flow.bytes_in_flight ?? 0)} of ${fmtBytes(flow.capacity_bytes)}`);
    if (flow.waits) parts.push(`waited for credit ${fmtInt(flow.waits)}×`);
    if (p.completed) parts.push("completed");
    setText(this.summary, parts.join(" · "));
    this.chart.update(sourceRate.rates, now);

    const failed = p.last_error ? `failed${p.failed_stage ? ` in ${p.failed_stage}` : ""}: ${p.last_error}` : "";
    setText(this.error, failed);
    show(this.error, Boolean(failed));

    this.graph.update(name, p);

    // stages: the source first, then every stage in the order the server gives
    const sinks = p.sinks ?? {};
    const health = src.health?.state;
    const sourceDown = health !== undefined && health !== "connected" && health !== "stopped";
    const rows = [{ source: true }, ...Object.entries(p.stages ?? {}).map(([stage, m]) => ({ stage, m }))];
    const live = new Set();
    syncRows(
      this.stageRows,
      rows,
      (row) => (row.source ? "(source)" : row.stage),
      (row) => {
        if (row.source) {
          const spark = this.sparkFor(SOURCE);
          live.add(SOURCE);
          spark.update(sourceRate.rates, now);
          return [
            { text: `${src.name ?? "source"} (${src.kind ?? "source"})`, cls: "stage-name" },
            "",
            { text: fmtInt(flow.emitted ?? 0), cls: "num" },
            { text: fmtRate(sourceRate.rate), cls: "num" },
            spark,
            { text: fmtInt(src.dropped ?? ""), cls: "num" },
            { text: fmtInt(src.dead_lettered ?? ""), cls: src.dead_lettered ? "num bad" : "num" },
            "",
            { text: `${fmtInt(flow.in_flight ?? 0)}/${fmtInt(flow.capacity ?? 0)}`, cls: "num" },
            "",
            { text: clipMiddle(sourceDown ? src.health?.last_error ?? src.last_error ?? "" : "", 90), cls: "error-text", title: sourceDown ? String(src.health?.last_error ?? "") : "" },
          ];
        }
        const { stage, m } = row;
        const spark = this.sparkFor(stage);
        live.add(stage);
        const rin = seriesOf(name, stage, "in");
        spark.update(rin.rates, now);
        const sink = sinks[stage] ?? {};
        const extra = Object.entries(m)
          .filter(([k, v]) => !STAGE_FIELDS.has(k) && (typeof v === "number" || typeof v === "string"))
          .map(([k, v]) => `${k} ${typeof v === "number" ? fmtInt(v) : v}`)
          .join(" · ");
        return [
          { text: stage, cls: "stage-name" },
          { text: fmtInt(m.in ?? 0), cls: "num" },
          { text: fmtInt(m.out ?? 0), cls: "num" },
          { text: fmtRate(rin.rate), cls: "num" },
          spark,
          { text: fmtInt(m.dropped ?? 0), cls: m.dropped ? "num warn" : "num" },
          { text: fmtInt(m.dead_lettered ?? 0), cls: m.dead_lettered ? "num bad" : "num" },
          { text: fmtInt(m.errors ?? 0), cls: m.errors ? "num bad" : "num" },
          { text: "running" in sink ? fmtInt((sink.running ?? 0) + (sink.queued ?? 0)) : "", cls: "num" },
          { text: clip(extra, 80), cls: "small muted", title: extra },
          { text: clipMiddle(m.last_error ?? "", 90), cls: "error-text", title: m.last_error ?? "" },
        ];
      },
      {
        testid: "stage-row",
        columns: ["stage", "in", "out", "rate", "chart", "dropped", "dead_lettered", "errors", "in_flight", "details", "last_error"],
      },
    );
    for (const stage of this.stageSparks.keys()) if (!live.has(stage)) this.stageSparks.delete(stage);

    this.updateSource(src, now);
    this.updateSuppressions(p.suppressions ?? {}, now);
  }

  updateSource(src, now) {
    setText(this.sourceTitle, `${src.name ?? ""}${src.kind ? ` (${src.kind})` : ""}`);
    const health = src.health ?? {};
    const state = health.state ?? (src.connected === true ? "connected" : src.connected === false ? "reconnecting" : "");
    setText(this.sourceHealth, state);
    setClass(this.sourceHealth, badgeClass(state));
    show(this.sourceHealth, Boolean(state));
    const fields = [];
    const add = (label, value, cls = "") => {
      if (value !== undefined && value !== null && value !== "") fields.push([label, value, cls]);
    };
    const down = state !== "connected" && state !== "stopped";
    if (isEpoch(health.since)) add("since", `${fmtClock(health.since)} (${fmtAgo(health.since, now)})`);
    if (down && health.attempt) add("attempt", fmtInt(health.attempt), "warn");
    add("url", src.url);
    if (Array.isArray(src.topics)) add("topics", src.topics.join(", "));
    add("group", src.group_id);
    add("received", typeof src.received === "number" ? fmtInt(src.received) : undefined);
    add("emitted", typeof src.emitted === "number" ? fmtInt(src.emitted) : undefined);
    if (src.reconnects) add("reconnects", fmtInt(src.reconnects), "warn");
    if (src.bad_messages) add("bad messages", fmtInt(src.bad_messages), "bad");
    if (src.outages) add("outages", fmtInt(src.outages), "bad");
    if (src.out_of_sequence) add("out of sequence", fmtInt(src.out_of_sequence), "warn");
    add("last seq", src.last_seq);
    if (src.lag !== undefined && src.lag !== null && typeof src.lag !== "object") add("lag", fmtInt(src.lag));
    add("waiting", src.waiting, "warn");
    if (src.restoring) add("restoring", `${fmtInt(src.restoring)} partitions`, "warn");
    add(down ? "last error" : "previous error", health.last_error ?? src.last_error, down ? "bad" : "muted");
    syncRows(
      this.sourceFields,
      fields,
      ([label]) => label,
      ([label, value, cls]) => [
        { text: label, cls: "muted" },
        { text: clipMiddle(value, 90), cls, title: String(value) },
      ],
      { testid: "source-field", columns: ["name", "value"] },
    );

    const lags = partitionLag(src);
    show(this.lagTable, lags.length > 0);
    let maxLag = 0;
    for (const [, lag] of lags) if (typeof lag === "number" && lag > maxLag) maxLag = lag;
    syncRows(
      this.lagRows,
      lags,
      ([partition]) => partition,
      ([partition, lag]) => [
        partition,
        { text: typeof lag === "number" ? fmtInt(lag) : "–", cls: "num" },
        { text: typeof lag === "number" && maxLag > 0 ? "█".repeat(Math.max(lag > 0 ? 1 : 0, Math.round((12 * lag) / maxLag))) : "", cls: "bar" },
      ],
      { cap: MAX_LAG_ROWS, testid: "lag-row", columns: ["partition", "lag", "bar"] },
    );
  }

  updateSuppressions(suppressions, now) {
    const chips = [];
    const entries = [];
    for (const [stage, s] of Object.entries(suppressions)) {
      for (const [reason, n] of Object.entries(s?.totals ?? {})) chips.push([stage, reason, n]);
      if (s?.evicted) chips.push([stage, "forgotten keys", s.evicted]);
      for (const e of s?.entries ?? []) entries.push({ ...e, stage: e.stage ?? stage });
    }
    entries.sort((a, b) => (b.last_at ?? 0) - (a.last_at ?? 0));
    syncRows(
      this.suppressionTotals,
      chips,
      ([stage, reason]) => `${stage}\u0001${reason}`,
      ([stage, reason, n]) => [`${stage}: ${reason} ${fmtInt(n)}`],
      { testid: "suppression-total", rowTag: "span", cellTag: "span" },
    );
    syncRows(
      this.suppressionRows,
      entries,
      (e) => `${e.stage}\u0001${compact(e.key)}\u0001${e.reason}`,
      (e) => {
        let eligible;
        if (e.eligible_at === null || e.eligible_at === undefined) eligible = "when the running call ends";
        else if (isEpoch(e.eligible_at) && isEpoch(now)) eligible = e.eligible_at <= now ? "now" : `in ${fmtSeconds(e.eligible_at - now)}`;
        else eligible = fmtSeconds(e.eligible_at - (e.last_at ?? 0)) + " after the last";
        return [
          e.stage,
          { text: compact(e.key, 60), cls: "key" },
          e.reason,
          { text: fmtInt(e.count), cls: "num" },
          fmtAgo(e.first_at, now),
          fmtAgo(e.last_at, now),
          eligible,
        ];
      },
      { cap: MAX_SUPPRESSIONS, testid: "suppression-row", columns: ["stage", "key", "reason", "count", "first", "last", "eligible"] },
    );
    show(this.suppressionsEmpty, entries.length === 0 && chips.length === 0);
  }
}

// -- the page -------------------------------------------------------------------------------

const $ = (id) => document.getElementById(id);
const views = new Map();
let latest = null;
let latestTime = -Infinity;
let framePending = false;
let lastReceived = 0;
/** What the page did, for tests and for a look in the console. */
const stats = { snapshots: 0, renders: 0, lastRenderMs: 0, maxRenderMs: 0, totalRenderMs: 0 };
window.rxagentDashboard = stats;

function ingest(snap) {
  if (!snap || typeof snap !== "object" || typeof snap.pipelines !== "object") return;
  const t = typeof snap.time === "number" ? snap.time : Date.now() / 1000;
  if (t < latestTime) return; // an older snapshot (a poll that crossed the stream)
  latestTime = t;
  lastReceived = performance.now();
  record(snap, t);
  latest = snap;
  stats.snapshots += 1;
  scheduleRender();
}

function scheduleRender() {
  if (!framePending) {
    framePending = true;
    requestAnimationFrame(() => {
      framePending = false;
      const started = performance.now();
      render(latest);
      const took = performance.now() - started;
      stats.renders += 1;
      stats.lastRenderMs = took;
      stats.totalRenderMs += took;
      if (took > stats.maxRenderMs) stats.maxRenderMs = took;
    });
  }
}

function render(snap) {
  const now = typeof snap.time === "number" ? snap.time : Date.now() / 1000;
  setText($("app-name"), snap.app ?? "");
  document.title = `${snap.app ? `${snap.app} – ` : ""}rxagent dashboard`;
  setText($("updated"), `updated ${fmtClock(now)}`);
  let total = 0;
  for (const name of Object.keys(snap.pipelines)) total += seriesOf(name, SOURCE, "out").rate;
  setText($("total-rate"), `${fmtRate(total)} events/s`);

  const container = $("pipelines");
  const names = Object.keys(snap.pipelines);
  show($("pipelines-empty"), names.length === 0);
  setText($("pipelines-empty"), "no pipelines");
  let previous = $("pipelines-empty");
  for (const name of names) {
    let view = views.get(name);
    if (!view) {
      view = new PipelineView(name);
      views.set(name, view);
    }
    if (previous.nextSibling !== view.root) container.insertBefore(view.root, previous.nextSibling);
    previous = view.root;
    view.update(snap.pipelines[name], now);
  }
  for (const [name, view] of views) {
    if (!(name in snap.pipelines)) {
      view.root.remove();
      views.delete(name);
    }
  }

  stateBrowser.update(snap.stores ?? {});
  renderDeadLetters(snap.dead_letters ?? []);
  renderTools(snap.tools ?? {}, snap.activations ?? [], now);
}

function renderDeadLetters(letters) {
  setText($("dead-letter-count"), letters.length ? `(latest ${Math.min(letters.length, MAX_DEAD_LETTERS)})` : "(none)");
  syncRows(
    $("dead-letter-rows"),
    letters,
    (d) => `${d.time}\u0001${d.pipeline}\u0001${d.stage}\u0001${d.reason}\u0001${compact(d.value, 200)}`,
    (d) => [
      { text: fmtClock(d.time), cls: "small" },
      d.pipeline ?? "",
      d.stage ?? "",
      { text: clipMiddle(d.reason ?? "", 110), cls: "bad reason", title: String(d.reason ?? "") },
      { text: compact(d.value, 80), cls: "value", title: compact(d.value, 2000) },
    ],
    { cap: MAX_DEAD_LETTERS, testid: "dead-letter-row", columns: ["time", "pipeline", "stage", "reason", "value"] },
  );
}

// -- tools and the activation timeline ---------------------------------------------------------

const timeline = { lanes: new Map(), bars: new Map(), axis: null, width: 0, available: 0 };
const LANE_H = 20;
const LABEL_W = 130;

function renderTools(tools, activations, now) {
  syncRows(
    $("tool-rows"),
    Object.entries(tools),
    ([name]) => name,
    ([name, t]) => [
      { text: name, cls: "stage-name" },
      { text: fmtInt(t.calls ?? 0), cls: "num" },
      { text: fmtInt(t.failures ?? 0), cls: t.failures ? "num bad" : "num" },
      { text: fmtInt(t.retries ?? 0), cls: t.retries ? "num warn" : "num" },
      { text: fmtInt(t.busy ?? 0), cls: "num" },
      { text: fmtInt(t.cooldown ?? 0), cls: "num" },
      { text: t.p50 === null || t.p50 === undefined ? "–" : fmtSeconds(t.p50), cls: "num" },
      { text: t.p99 === null || t.p99 === undefined ? "–" : fmtSeconds(t.p99), cls: "num" },
    ],
    { testid: "tool-row", columns: ["tool", "calls", "failures", "retries", "busy", "cooldown", "p50", "p99"] },
  );

  const svg = $("activations-timeline");
  // the panel's width comes from a ResizeObserver: reading it here would force a layout
  const width = Math.max(320, Math.floor(timeline.available) - 2);
  const lanes = [...new Set([...Object.keys(tools), ...activations.map((a) => String(a.tool))])];
  const height = Math.max(1, lanes.length) * LANE_H + 18;
  if (width !== timeline.width || svg.getAttribute("height") !== String(height)) {
    timeline.width = width;
    setAttr(svg, "width", width);
    setAttr(svg, "height", height);
    setAttr(svg, "viewBox", `0 0 ${width} ${height}`);
    if (timeline.axis) timeline.axis.remove();
    timeline.axis = svgEl("g", { class: "axis" });
    for (let s = 60; s >= 0; s -= 15) {
      const x = LABEL_W + ((60 - s) / 60) * (width - LABEL_W - 8);
      timeline.axis.append(
        svgEl("line", { x1: x, x2: x, y1: 0, y2: height - 14 }),
        svgEl("text", { x, y: height - 3, "text-anchor": "middle", text: s ? `-${s}s` : "now" }),
      );
    }
    svg.prepend(timeline.axis);
  }
  const plot = width - LABEL_W - 8;
  lanes.forEach((tool, i) => {
    let lane = timeline.lanes.get(tool);
    if (!lane) {
      lane = svgEl("text", { class: "lane-label", x: 4 });
      lane.textContent = clip(tool, 18);
      timeline.lanes.set(tool, lane);
      svg.append(lane);
    }
    setAttr(lane, "y", i * LANE_H + 14);
  });
  for (const [tool, lane] of timeline.lanes) {
    if (!lanes.includes(tool)) {
      lane.remove();
      timeline.lanes.delete(tool);
    }
  }
  const laneOf = new Map(lanes.map((tool, i) => [tool, i]));
  const seen = new Set();
  for (const a of activations.slice(0, MAX_ACTIVATIONS)) {
    if (!isEpoch(a.started) || !isEpoch(now)) continue;
    const end = a.started + (typeof a.duration === "number" ? a.duration : Math.max(0, now - a.started));
    if (end < now - HISTORY_SECONDS) continue;
    let key = `${a.tool}\u0001${a.started}\u0001${compact(a.key, 80)}`;
    while (seen.has(key)) key += "\u0002";
    seen.add(key);
    let bar = timeline.bars.get(key);
    if (!bar) {
      bar = svgEl("rect", { "data-testid": "activation", height: LANE_H - 6, rx: 2 });
      bar.append(svgEl("title"));
      timeline.bars.set(key, bar);
      svg.append(bar);
    }
    const x0 = LABEL_W + Math.max(0, (a.started - (now - HISTORY_SECONDS)) / HISTORY_SECONDS) * plot;
    const x1 = LABEL_W + Math.min(1, (end - (now - HISTORY_SECONDS)) / HISTORY_SECONDS) * plot;
    setAttr(bar, "x", x0.toFixed(1));
    setAttr(bar, "width", Math.max(3, x1 - x0).toFixed(1));
    setAttr(bar, "y", (laneOf.get(String(a.tool)) ?? 0) * LANE_H + 3);
    const status = a.duration === null || a.duration === undefined ? "running" : a.ok ? "ok" : "failed";
    setAttr(bar, "class", `activation activation-${status}`);
    setAttr(bar, "data-status", status);
    setText(
      bar.firstChild,
      `${a.tool} key=${compact(a.key, 80)} at ${fmtClock(a.started)}, ${status}` +
        (typeof a.duration === "number" ? ` in ${fmtSeconds(a.duration)}` : "") +
        (a.error ? `: ${compact(a.error, 300)}` : ""),
    );
  }
  for (const [key, bar] of timeline.bars) {
    if (!seen.has(key)) {
      bar.remove();
      timeline.bars.delete(key);
    }
  }
}

// -- the state browser ----------------------------------------------------------------------------

const stateBrowser = {
  store: null,
  q: "",
  version: null,
  lastFetch: 0,
  inflight: false,
  again: false,
  seq: 0,
  timer: null,

  init() {
    $("store-picker").addEventListener("change", (ev) => {
      this.store = ev.target.value;
      this.fetch();
    });
    let debounce = null;
    $("state-search").addEventListener("input", (ev) => {
      clearTimeout(debounce);
      debounce = setTimeout(() => {
        this.q = ev.target.value.trim();
        this.fetch();
      }, 200);
    });
  },

  update(stores) {
    const picker = $("store-picker");
    const names = Object.keys(stores);
    const options = new Map([...picker.options].map((o) => [o.value, o]));
    names.forEach((name, i) => {
      let option = options.get(name);
      if (!option) {
        option = el("option", { "data-testid": "store-option" });
        option.value = name;
      }
      options.delete(name);
      setText(option, `${name} (${fmtInt(stores[name]?.entries ?? 0)} keys)`);
      if (picker.options[i] !== option) picker.insertBefore(option, picker.options[i] ?? null);
    });
    for (const option of options.values()) option.remove();
    if (this.store === null || !names.includes(this.store)) {
      this.store = names.length ? names[0] : null;
      this.version = null;
    }
    if (this.store !== null && picker.value !== this.store) picker.value = this.store;
    if (this.store === null) {
      setText($("state-count"), "no state stores");
      return;
    }
    const version = stores[this.store]?.version;
    if (version !== this.version) {
      const wait = 1000 - (performance.now() - this.lastFetch);
      if (wait <= 0) this.fetch();
      else if (this.timer === null) {
        this.timer = setTimeout(() => {
          this.timer = null;
          this.fetch();
        }, wait);
      }
    }
  },

  async fetch() {
    if (this.store === null) return;
    if (this.inflight) {
      this.again = true;
      return;
    }
    this.inflight = true;
    this.lastFetch = performance.now();
    const seq = ++this.seq;
    const store = this.store;
    const q = this.q;
    try {
      const response = await fetch(apiUrl(`api/state/${encodeURIComponent(store)}`, { q, limit: MAX_STATE_ROWS }), {
        headers: { accept: "application/json" },
      });
      if (!response.ok) throw new Error(`api/state answered ${response.status}`);
      const data = await response.json();
      if (seq === this.seq && store === this.store) this.render(data, q);
    } catch (error) {
      const count = $("state-count");
      setText(count, `could not read ${store}: ${error.message}`);
      setClass(count, "bad");
    } finally {
      this.inflight = false;
      if (this.again) {
        this.again = false;
        this.fetch();
      }
    }
  },

  render(data, q) {
    this.version = data.version;
    const entries = Array.isArray(data.entries) ? data.entries : [];
    const count = $("state-count");
    setClass(count, "muted");
    setText(
      count,
      `${fmtInt(entries.length)} of ${fmtInt(data.total ?? entries.length)} keys` +
        (q ? ` matching “${clip(q, 40)}”` : "") +
        ` · version ${fmtInt(data.version ?? 0)}`,
    );
    syncRows(
      $("state-rows"),
      entries,
      (e) => compact(e.key, 500),
      (e) => [
        { text: compact(e.key, 60), cls: "key" },
        { text: compact(e.value, 200), cls: "value", title: compact(e.value, 4000) },
        { text: fmtInt(e.version ?? ""), cls: "num" },
        { text: fmtSeconds(e.staleness), cls: "num" },
      ],
      { cap: MAX_STATE_ROWS, testid: "state-row", columns: ["key", "value", "version", "staleness"] },
    );
  },
};

// -- connection ------------------------------------------------------------------------------------

function setConnection(state) {
  const badge = $("connection");
  setText(badge, state);
  setClass(badge, state === "live" ? "badge badge-ok" : state === "offline" ? "badge badge-bad" : "badge badge-wait");
}

let source = null;

function connect() {
  if (!("EventSource" in window)) return;
  source = new EventSource(apiUrl("api/events"));
  source.addEventListener("snapshot", (ev) => {
    try {
      ingest(JSON.parse(ev.data));
    } catch (error) {
      console.error("rxagent dashboard: a snapshot that is not JSON", error);
    }
    setConnection("live");
  });
  source.addEventListener("open", () => setConnection("live"));
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) {
      setConnection("offline");
      source = null;
      setTimeout(connect, 3000);
    } else setConnection("reconnecting");
  });
}

async function poll() {
  try {
    const response = await fetch(apiUrl("api/snapshot"), { headers: { accept: "application/json" } });
    if (!response.ok) throw new Error(String(response.status));
    ingest(await response.json());
    if (!source || source.readyState !== EventSource.OPEN) setConnection("polling");
  } catch {
    if (!source || source.readyState !== EventSource.OPEN) setConnection("offline");
  }
}

stateBrowser.init();
poll();
connect();
// the stream sends only what changed; when it is silent, poll so rates fall to zero
setInterval(() => {
  if (performance.now() - lastReceived > SILENCE_MS) poll();
}, 1000);
new ResizeObserver((entries) => {
  for (const entry of entries) timeline.available = entry.contentRect.width;
  if (latest) scheduleRender();
}).observe($("activations-timeline").parentElement);
