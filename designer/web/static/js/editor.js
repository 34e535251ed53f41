/* The flow editor: palette, Drawflow canvas, config forms generated from each node type's
 * JSON Schema, live validation, undo/redo, copy/paste, import/export, and "Run now" with
 * live node states and an inspector of the run.
 *
 * The flowmill/1 flow object (S.flow) is the one source of truth. The canvas is drawn from
 * it (redraw) and every canvas edit (Drawflow event) is written back to it, so undo/redo
 * is "restore a snapshot and redraw", and save/validate/export send exactly S.flow.
 * Drawflow numbers nodes and ports (node-7, output_2); S.dfOf/S.nodeOf and S.ports map
 * them to flowmill node ids and port names. */
"use strict";

(() => {
  const { api, el, toast } = Flowmill;
  const $ = (id) => document.getElementById(id);
  const root = $("editor");
  const enc = encodeURIComponent;

  const COMMON_KEYS = ["on_error", "retries", "retry_delay", "timeout"];
  const CATEGORY_ORDER = ["trigger", "file", "sql", "transform", "util"];
  const FINAL_JOB_STATES = new Set(["succeeded", "failed", "cancelled", "expired", "aborted", "dead_letter"]);
  // schemas mark code with format sql/expression; these names are code in any node type
  const CODE_NAMES = /^(query|sql|statement|condition|expression|script)$/;
  const SECRET_NAMES = /^(url|dsn|password|token|api_key|secret)$/;
  const PARAM_TYPES = ["string", "number", "integer", "boolean", "date"];
  // the catalog's schemas may arrive with sorted keys: the main settings go first
  const FIELD_ORDER = ["path", "url", "connection", "table", "schema", "query", "statement", "condition", "fields",
    "rename", "keep", "mode", "key", "format", "encoding", "delimiter", "header", "columns", "types", "cron", "every",
    "tz", "calendar", "seconds"];
  const NODE_WIDTH = 210;
  const MAX_FLOW_BYTES = 5 * 1024 * 1024;
  const HISTORY_LIMIT = 200;

  const S = {
    user: null,
    canWrite: false,
    canRun: false,
    catalog: new Map(), // type -> spec from /api/node-types
    connections: null, // names from /api/connections, null when unavailable
    df: null, // the Drawflow instance
    flow: null, // the flow being edited (flowmill/1)
    serverId: null, // the flow's id on the server once saved or opened
    hash: null, // server hash this edit is based on
    savedText: null, // canonical text of the last saved/opened version
    history: [],
    hIndex: -1,
    lastKey: null,
    lastCommitAt: 0,
    commitQueued: false,
    silent: false, // true while the canvas is drawn from S.flow
    dfOf: new Map(), // node id -> drawflow id (string)
    nodeOf: new Map(), // drawflow id -> node id
    ports: new Map(), // node id -> {inputs: [...], outputs: [...]}
    selection: new Set(),
    primary: null,
    multi: false,
    issues: [],
    validateTimer: null,
    validateSeq: 0,
    saving: false,
    heldSaves: [],
    pasteCount: 0,
    run: null, // the run shown on the canvas and in the inspector
    runBuf: new Map(), // run id -> events seen before we knew the run was ours
    jobBuf: new Map(), // job id -> JobChanged events
    starting: false,
    connectedOnce: false,
    inspectorTab: "sample",
    inspectorChoice: null, // null: open while there is a run; true/false: the user's choice
    samplePort: null,
  };

  // -- small helpers ----------------------------------------------------------------------
  const clone = (value) => JSON.parse(JSON.stringify(value));
  const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);

  function hex4() {
    const bytes = new Uint8Array(2);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function humanize(key) {
    const text = String(key).replace(/_/g, " ");
    return text.charAt(0).toUpperCase() + text.slice(1);
  }

  function cssName(text) {
    return String(text || "other").toLowerCase().replace(/[^a-z0-9-]/g, "-");
  }

  function sorted(value) {
    if (Array.isArray(value)) return value.map(sorted);
    if (isObject(value)) {
      const out = {};
      for (const key of Object.keys(value).sort()) out[key] = sorted(value[key]);
      return out;
    }
    return value;
  }

  /** The flow as engine.flows.format.dump_flow orders it: sorted keys, nodes by id, edges by ends. */
  function canonical(flow) {
    const out = sorted(flow);
    const key = (e) => [e.source, e.source_port, e.target, e.target_port].map(String).join("\u0000");
    const order = (a, b) => (a < b ? -1 : a > b ? 1 : 0); // code points, as Python sorts
    if (Array.isArray(out.nodes)) out.nodes.sort((a, b) => order(String(a.id), String(b.id)));
    if (Array.isArray(out.edges)) out.edges.sort((a, b) => order(key(a), key(b)));
    return out;
  }

  const stableText = (flow) => JSON.stringify(canonical(flow));
  const isDirty = () => !!S.flow && stableText(S.flow) !== S.savedText;

  function nodeById(id) {
    return S.flow.nodes.find((n) => n.id === id) || null;
  }

  function nodeLabel(id) {
    const node = nodeById(id);
    if (!node) return id;
    return node.name ? `${node.name} (${id})` : id;
  }

  function nodeEl(id) {
    const dfId = S.dfOf.get(id);
    return dfId ? document.getElementById(`node-${dfId}`) : null;
  }

  function newNodeId(type) {
    const base = cssName(String(type).split(".").pop()) || "node";
    const taken = new Set(S.flow.nodes.map((n) => n.id));
    let id;
    do id = `${base}-${hex4()}`; while (taken.has(id));
    return id;
  }

  /** element.replaceChildren without the null/false placeholders of conditional parts. */
  function fill(element, ...children) {
    element.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
    return element;
  }

  function setValue(element, value) {
    element.value = value === undefined || value === null ? "" : String(value);
    return element;
  }

  // -- start ------------------------------------------------------------------------------
  Flowmill.ready.then(start).catch((error) => {
    root.classList.remove("is-loading");
    if (error && error.status === 401) return; // common.js is taking us to the login page
    console.error(error);
    toast(`The editor could not start: ${error.message}`, "error", { sticky: true });
  });

  async function start(user) {
    S.user = user;
    S.canWrite = Flowmill.can("flows.write");
    S.canRun = Flowmill.can("jobs.run");
    root.classList.toggle("is-readonly", !S.canWrite);
    $("readonly-badge").hidden = S.canWrite;
    const catalog = await api("GET", "/api/node-types");
    for (const spec of catalog) S.catalog.set(spec.type, spec);
    setupCanvas();
    buildPalette();
    wireToolbar();
    wireKeys();
    wireInspector();
    Flowmill.live(onLive);
    const connections = loadConnections();
    refreshFlowList();
    const id = root.dataset.flowId;
    if (id) await openFlow(id);
    else newFlow();
    await connections;
    root.classList.remove("is-loading");
  }

  async function loadConnections() {
    try {
      const list = await api("GET", "/api/connections");
      S.connections = list.map((c) => c.name).sort();
    } catch (error) {
      S.connections = null; // free text instead of a picker
    }
    if (S.selection.size === 1) renderPanel();
  }

  // -- canvas -----------------------------------------------------------------------------
  function setupCanvas() {
    const container = $("canvas");
    const df = new Drawflow(container);
    df.reroute = false;
    df.zoom_min = 0.3;
    df.zoom_max = 2;
    // Delete, copy and paste are handled for the whole page (wireKeys), not by Drawflow
    df.key = function key(event) { this.dispatch("keydown", event); };
    df.start();
    S.df = df;

    df.on("nodeMoved", onNodeMoved);
    df.on("nodeRemoved", onNodeRemoved);
    df.on("connectionCreated", onConnectionCreated);
    df.on("connectionRemoved", onConnectionRemoved);
    df.on("clickEnd", onCanvasClick);
    df.on("zoom", () => requestAnimationFrame(syncView));
    df.on("translate", ({ x, y }) => syncGrid(x, y, df.zoom));

    container.addEventListener("mousedown", (event) => {
      S.multi = event.shiftKey || event.ctrlKey || event.metaKey;
      // read-only: no wiring (selection and panning still work)
      if (!S.canWrite && event.target.closest(".input, .output")) event.stopPropagation();
    }, true);
    container.addEventListener("contextmenu", (event) => {
      if (!S.canWrite) { event.preventDefault(); event.stopPropagation(); }
    }, true);
    container.addEventListener("dragover", (event) => {
      if (S.canWrite && event.dataTransfer.types.includes("application/x-flowmill-type")) {
        event.preventDefault();
        event.dataTransfer.dropEffect = "copy";
        container.classList.add("drop-target");
      }
    });
    container.addEventListener("dragleave", () => container.classList.remove("drop-target"));
    container.addEventListener("drop", (event) => {
      container.classList.remove("drop-target");
      const type = event.dataTransfer.getData("application/x-flowmill-type");
      if (!type || !S.canWrite) return;
      event.preventDefault();
      const point = canvasPoint(event.clientX, event.clientY);
      addNodeOfType(type, point.x - NODE_WIDTH / 2, point.y - 24);
    });
    window.addEventListener("resize", () => syncView());
  }

  /** Screen point -> canvas coordinates (Drawflow scales around the canvas centre). */
  function canvasPoint(clientX, clientY) {
    const rect = S.df.precanvas.getBoundingClientRect();
    return { x: (clientX - rect.x) / S.df.zoom, y: (clientY - rect.y) / S.df.zoom };
  }

  function syncGrid(x, y, zoom) {
    const c = S.df.container;
    const size = 24 * zoom;
    const ox = c.clientWidth / 2 * (1 - zoom) + x;
    const oy = c.clientHeight / 2 * (1 - zoom) + y;
    c.style.backgroundSize = `${size}px ${size}px`;
    c.style.backgroundPosition = `${ox}px ${oy}px`;
  }

  function syncView() {
    if (!S.df) return;
    syncGrid(S.df.canvas_x, S.df.canvas_y, S.df.zoom);
    $("btn-zoom-reset").textContent = `${Math.round(S.df.zoom * 100)}%`;
  }

  function setView(zoom, x, y) {
    const df = S.df;
    df.zoom = zoom;
    df.zoom_last_value = zoom;
    df.canvas_x = x;
    df.canvas_y = y;
    df.precanvas.style.transform = `translate(${x}px, ${y}px) scale(${zoom})`;
    syncView();
  }

  /** Zoom and pan so every node is visible (never zooming in beyond 100 %). */
  function fitView() {
    const c = S.df.container;
    const W = c.clientWidth;
    const H = c.clientHeight;
    const boxes = S.flow.nodes.map((n) => nodeEl(n.id)).filter(Boolean);
    if (!boxes.length || !W || !H) { setView(1, 0, 0); return; }
    let minX = Infinity, minY = Infinity, maxX = -Infinity, maxY = -Infinity;
    for (const b of boxes) {
      minX = Math.min(minX, b.offsetLeft);
      minY = Math.min(minY, b.offsetTop);
      maxX = Math.max(maxX, b.offsetLeft + b.offsetWidth);
      maxY = Math.max(maxY, b.offsetTop + b.offsetHeight);
    }
    const pad = 60;
    const zoom = Math.max(S.df.zoom_min, Math.min(1, W / (maxX - minX + 2 * pad), H / (maxY - minY + 2 * pad)));
    const cx = (minX + maxX) / 2;
    const cy = (minY + maxY) / 2;
    setView(zoom, zoom * (W / 2 - cx), zoom * (H / 2 - cy));
  }

  function nodePorts(node) {
    const spec = S.catalog.get(node.type);
    const inputs = spec ? [...spec.inputs] : [];
    const outputs = spec ? [...spec.outputs] : [];
    // a port an edge names but the type lacks is drawn too, so the edge stays visible
    for (const e of S.flow.edges) {
      if (e.target === node.id && !inputs.includes(String(e.target_port))) inputs.push(String(e.target_port));
      if (e.source === node.id && !outputs.includes(String(e.source_port))) outputs.push(String(e.source_port));
    }
    return { inputs, outputs };
  }

  function drawNode(node, index) {
    const spec = S.catalog.get(node.type);
    const ports = nodePorts(node);
    const ui = isObject(node.ui) ? node.ui : {};
    const x = Number.isFinite(ui.x) ? ui.x : 80 + (index % 4) * 270;
    const y = Number.isFinite(ui.y) ? ui.y : 80 + Math.floor(index / 4) * 190;
    const classes = `fm-node cat-${cssName(spec ? spec.category : "unknown")}${spec ? "" : " unknown-type"}`;
    const dfId = String(S.df.addNode(node.type, ports.inputs.length, ports.outputs.length, x, y, classes, {}, "",
      false));
    S.dfOf.set(node.id, dfId);
    S.nodeOf.set(dfId, node.id);
    S.ports.set(node.id, ports);
    const box = document.getElementById(`node-${dfId}`);
    box.dataset.nodeId = node.id;
    box.dataset.type = node.type;
    const required = new Set(spec ? spec.required_inputs : []);
    box.querySelectorAll(".inputs > .input").forEach((port, i) => {
      const name = ports.inputs[i];
      port.dataset.port = name;
      port.title = `input '${name}'${required.has(name) ? " (required)" : ""}`;
      if (spec && !spec.inputs.includes(name)) port.classList.add("port-unknown");
    });
    box.querySelectorAll(".outputs > .output").forEach((port, i) => {
      const name = ports.outputs[i];
      port.dataset.port = name;
      port.title = `output '${name}': drag onto an input to wire it`;
      if (name === "error") port.classList.add("port-error");
      if (spec && !spec.outputs.includes(name)) port.classList.add("port-unknown");
    });
    const rows = Math.max(ports.inputs.length, ports.outputs.length);
    const content = box.querySelector(".drawflow_content_node");
    content.style.setProperty("--port-rows", String(rows));
    content.append(
      el("div", { class: "fm-card-head" },
        el("span", { class: "fm-card-title" }, spec ? spec.title : node.type),
        el("span", { class: "fm-card-state", "aria-hidden": "true" })),
      el("div", { class: "fm-card-body" },
        el("div", { class: "fm-card-name" }),
        el("div", { class: "fm-card-summary" }),
        el("div", { class: "node-counts" }),
        el("div", { class: "fm-card-issue" })),
      el("div", { class: "fm-card-ports" }));
    updateNodeCard(node);
    return dfId;
  }

  function summary(node) {
    const cfg = isObject(node.config) ? node.config : {};
    for (const key of ["path", "table", "query", "statement", "condition", "cron", "every", "seconds"]) {
      const value = cfg[key];
      if (value !== undefined && value !== "" && !isObject(value)) {
        const text = String(value).replace(/\s+/g, " ");
        return `${key}: ${text.length > 30 ? "…" + text.slice(-29) : text}`;
      }
    }
    if (isObject(cfg.fields)) {
      const names = Object.keys(cfg.fields);
      if (names.length) return `fields: ${names.join(", ")}`.slice(0, 40);
    }
    return "";
  }

  function updateNodeCard(node) {
    const box = nodeEl(node.id);
    if (!box) return;
    box.querySelector(".fm-card-name").textContent = node.name || node.id;
    box.querySelector(".fm-card-name").title = node.id;
    box.querySelector(".fm-card-summary").textContent = summary(node);
    box.classList.toggle("is-disabled", node.disabled === true);
  }

  function drawEdge(edge) {
    const s = S.dfOf.get(edge.source);
    const t = S.dfOf.get(edge.target);
    if (!s || !t) return; // an end that is not a node: the validator reports it
    const out = S.ports.get(edge.source).outputs.indexOf(String(edge.source_port));
    const inp = S.ports.get(edge.target).inputs.indexOf(String(edge.target_port));
    if (out < 0 || inp < 0) return;
    S.df.addConnection(s, t, `output_${out + 1}`, `input_${inp + 1}`);
    decorateEdge(edge);
  }

  function edgeEls(edge) {
    const s = S.dfOf.get(edge.source);
    const t = S.dfOf.get(edge.target);
    if (!s || !t) return [];
    const out = S.ports.get(edge.source).outputs.indexOf(String(edge.source_port)) + 1;
    const inp = S.ports.get(edge.target).inputs.indexOf(String(edge.target_port)) + 1;
    return [...S.df.container.querySelectorAll(
      `.connection.node_in_node-${t}.node_out_node-${s}.output_${out}.input_${inp}`)];
  }

  function decorateEdge(edge) {
    for (const svg of edgeEls(edge)) {
      svg.classList.toggle("fm-edge-error", edge.source_port === "error");
    }
  }

  /** Draw the canvas from S.flow (after open, undo, redo, import). */
  function redraw() {
    const df = S.df;
    S.silent = true;
    try {
      df.clear();
      df.node_selected = null;
      df.connection_selected = null;
      S.dfOf.clear();
      S.nodeOf.clear();
      S.ports.clear();
      S.flow.nodes.forEach((node, i) => drawNode(node, i));
      for (const edge of S.flow.edges) drawEdge(edge);
    } finally {
      S.silent = false;
    }
    for (const id of [...S.selection]) if (!S.dfOf.has(id)) S.selection.delete(id);
    if (S.primary && !S.selection.has(S.primary)) S.primary = [...S.selection].pop() || null;
    markSelection();
    applyIssueMarks();
    applyRunStates();
    $("canvas-empty").hidden = S.flow.nodes.length > 0;
  }

  function portName(nodeId, cls, side) {
    const ports = S.ports.get(nodeId);
    const index = Number(String(cls).split("_")[1]) - 1;
    return ports ? ports[side][index] : undefined;
  }

  function onConnectionCreated(c) {
    if (S.silent) return;
    const source = S.nodeOf.get(String(c.output_id));
    const target = S.nodeOf.get(String(c.input_id));
    if (!S.canWrite || !source || !target) {
      S.silent = true;
      try {
        S.df.removeSingleConnection(c.output_id, c.input_id, c.output_class, c.input_class);
      } finally {
        S.silent = false;
      }
      return;
    }
    const edge = {
      source,
      source_port: portName(source, c.output_class, "outputs"),
      target,
      target_port: portName(target, c.input_class, "inputs"),
    };
    const same = (e) => e.source === edge.source && e.source_port === edge.source_port
      && e.target === edge.target && e.target_port === edge.target_port;
    if (!S.flow.edges.some(same)) S.flow.edges.push(edge);
    decorateEdge(edge);
    touch();
  }

  function onConnectionRemoved(c) {
    if (S.silent) return;
    const source = S.nodeOf.get(String(c.output_id));
    const target = S.nodeOf.get(String(c.input_id));
    const sp = portName(source, c.output_class, "outputs");
    const tp = portName(target, c.input_class, "inputs");
    S.flow.edges = S.flow.edges.filter((e) => !(e.source === source && e.target === target
      && String(e.source_port) === sp && String(e.target_port) === tp));
    touch();
  }

  function onNodeRemoved(dfId) {
    if (S.silent) return;
    const id = S.nodeOf.get(String(dfId));
    if (!id) return;
    S.flow.nodes = S.flow.nodes.filter((n) => n.id !== id);
    S.flow.edges = S.flow.edges.filter((e) => e.source !== id && e.target !== id);
    S.nodeOf.delete(String(dfId));
    S.dfOf.delete(id);
    S.ports.delete(id);
    S.selection.delete(id);
    if (S.primary === id) S.primary = null;
    $("canvas-empty").hidden = S.flow.nodes.length > 0;
    renderPanel();
    touch();
  }

  function onNodeMoved(dfId) {
    const id = S.nodeOf.get(String(dfId));
    const node = id && nodeById(id);
    const data = S.df.drawflow.drawflow[S.df.module].data[dfId];
    if (!node || !data) return;
    node.ui = { ...(isObject(node.ui) ? node.ui : {}), x: Math.round(data.pos_x), y: Math.round(data.pos_y) };
    touch();
  }

  function onCanvasClick(event) {
    if (!S.canWrite) S.df.drag = false; // read-only: nodes stay where they are
    const target = event.target;
    if (!(target instanceof Element) || target.closest(".input, .output")) return updateButtons();
    const box = target.closest(".drawflow-node");
    const id = box && box.dataset.nodeId;
    if (id && S.dfOf.has(id)) {
      if (S.multi && S.selection.has(id) && S.selection.size > 1) S.selection.delete(id);
      else if (S.multi) S.selection.add(id);
      else S.selection = new Set([id]);
      S.primary = S.selection.has(id) ? id : [...S.selection].pop() || null;
    } else if (!S.multi || target.closest(".connection")) {
      S.selection.clear();
      S.primary = null;
    }
    selectionChanged();
  }

  function selectNodes(ids) {
    S.selection = new Set(ids.filter((id) => S.dfOf.has(id)));
    S.primary = [...S.selection].pop() || null;
    if (S.df.node_selected) { S.df.node_selected.classList.remove("selected"); S.df.node_selected = null; }
    selectionChanged();
  }

  function selectionChanged() {
    markSelection();
    renderPanel();
    renderInspectorDetail();
    highlightRunRow();
    updateButtons();
  }

  function markSelection() {
    for (const box of S.df.container.querySelectorAll(".drawflow-node")) {
      box.classList.toggle("fm-selected", S.selection.has(box.dataset.nodeId));
    }
  }

  // -- adding, copying, pasting, deleting -------------------------------------------------
  function addNodeOfType(type, x, y) {
    if (!S.canWrite || !S.catalog.has(type)) return null;
    const node = { id: newNodeId(type), type, config: {}, ui: { x: Math.round(x), y: Math.round(y) } };
    S.flow.nodes.push(node);
    S.silent = true;
    try { drawNode(node, S.flow.nodes.length - 1); } finally { S.silent = false; }
    $("canvas-empty").hidden = true;
    selectNodes([node.id]);
    commit();
    return node;
  }

  function addNodeAtCentre(type) {
    const rect = S.df.container.getBoundingClientRect();
    const p = canvasPoint(rect.x + rect.width / 2, rect.y + rect.height / 2);
    const n = S.flow.nodes.length % 5;
    addNodeOfType(type, p.x - NODE_WIDTH / 2 + n * 24, p.y - 40 + n * 24);
  }

  function copySelection() {
    const ids = new Set(S.selection);
    if (!ids.size) return false;
    const clip = {
      nodes: clone(S.flow.nodes.filter((n) => ids.has(n.id))),
      edges: clone(S.flow.edges.filter((e) => ids.has(e.source) && ids.has(e.target))),
    };
    S.clipboard = clip;
    S.pasteCount = 0;
    try { localStorage.setItem("flowmill.clipboard", JSON.stringify(clip)); } catch (e) { /* private mode */ }
    toast(`Copied ${clip.nodes.length} node${clip.nodes.length === 1 ? "" : "s"}`, "info", { ms: 2000 });
    updateButtons();
    return true;
  }

  function readClipboard() {
    try {
      const stored = JSON.parse(localStorage.getItem("flowmill.clipboard") || "null");
      if (stored && Array.isArray(stored.nodes)) return stored;
    } catch (e) { /* fall back to this page's copy */ }
    return S.clipboard || null;
  }

  function paste() {
    const clip = readClipboard();
    if (!S.canWrite || !clip || !clip.nodes.length) return;
    S.pasteCount += 1;
    const offset = 40 * S.pasteCount;
    const ids = new Map();
    const nodes = clip.nodes.map((n) => {
      const copy = clone(n);
      copy.id = newNodeId(n.type);
      ids.set(n.id, copy.id);
      const ui = isObject(n.ui) ? n.ui : { x: 80, y: 80 };
      copy.ui = { ...ui, x: (ui.x || 0) + offset, y: (ui.y || 0) + offset };
      return copy;
    });
    const edges = clip.edges.filter((e) => ids.has(e.source) && ids.has(e.target))
      .map((e) => ({ ...e, source: ids.get(e.source), target: ids.get(e.target) }));
    S.flow.nodes.push(...nodes);
    S.flow.edges.push(...edges);
    S.silent = true;
    try {
      nodes.forEach((n) => drawNode(n, S.flow.nodes.indexOf(n)));
      edges.forEach(drawEdge);
    } finally {
      S.silent = false;
    }
    $("canvas-empty").hidden = true;
    selectNodes(nodes.map((n) => n.id));
    commit();
  }

  function deleteSelection() {
    if (!S.canWrite) return;
    if (S.df.connection_selected) { S.df.removeConnection(); updateButtons(); return; }
    for (const id of [...S.selection]) {
      const dfId = S.dfOf.get(id);
      if (dfId) S.df.removeNodeId(`node-${dfId}`);
    }
    S.selection.clear();
    S.primary = null;
    selectionChanged();
  }

  // -- history ----------------------------------------------------------------------------
  /** One undo step for everything Drawflow reports in the same task (a node and its edges). */
  function touch() {
    if (S.commitQueued) return;
    S.commitQueued = true;
    queueMicrotask(() => { S.commitQueued = false; commit(); });
  }

  /** Record the flow as an undo step. Edits with the same key in quick succession (typing
   * in one field) are one step. */
  function commit(key) {
    const text = JSON.stringify(S.flow);
    if (text === S.history[S.hIndex]) { changed(); return; }
    const now = Date.now();
    if (key && key === S.lastKey && now - S.lastCommitAt < 1500 && S.hIndex > 0
        && S.hIndex === S.history.length - 1) {
      S.history[S.hIndex] = text;
    } else {
      S.history = S.history.slice(0, S.hIndex + 1);
      S.history.push(text);
      if (S.history.length > HISTORY_LIMIT) S.history.shift();
      S.hIndex = S.history.length - 1;
    }
    S.lastKey = key || null;
    S.lastCommitAt = now;
    changed();
  }

  function restore(index) {
    if (index < 0 || index >= S.history.length || !S.canWrite) return;
    S.hIndex = index;
    S.lastKey = null;
    S.flow = JSON.parse(S.history[index]);
    redraw();
    renderPanel();
    changed();
  }

  const undo = () => restore(S.hIndex - 1);
  const redo = () => restore(S.hIndex + 1);

  /** After every change: dirty flag, buttons, and a validation soon. */
  function changed() {
    const dirty = isDirty();
    $("dirty-indicator").hidden = !dirty;
    const title = S.flow.name || S.flow.id || "New flow";
    $("flow-title").textContent = title;
    $("flow-title").title = S.serverId ? `flow ${S.serverId}` : "not saved yet";
    document.title = `${dirty ? "● " : ""}${title} · Editor · Flowmill`;
    updateButtons();
    scheduleValidate();
    renderRun();
  }

  // -- loading and saving -----------------------------------------------------------------
  function normalise(flow) {
    const out = isObject(flow) ? flow : {};
    if (!out.format) out.format = "flowmill/1";
    if (!Array.isArray(out.nodes)) out.nodes = [];
    if (!Array.isArray(out.edges)) out.edges = [];
    out.nodes = out.nodes.filter(isObject);
    out.edges = out.edges.filter(isObject);
    for (const node of out.nodes) if (!isObject(node.config)) node.config = {};
    return out;
  }

  function setFlow(flow, { serverId = null, hash = null, savedText } = {}) {
    S.flow = normalise(flow);
    S.serverId = serverId;
    S.hash = hash;
    S.savedText = savedText !== undefined ? savedText : stableText(S.flow);
    S.history = [JSON.stringify(S.flow)];
    S.hIndex = 0;
    S.lastKey = null;
    S.selection.clear();
    S.primary = null;
    S.issues = [];
    dismissSavedNotice();
    history.replaceState(null, "", serverId ? `/editor/${enc(serverId)}` : "/editor");
    redraw();
    fitView();
    renderPanel();
    renderIssues();
    changed();
  }

  function newFlow() {
    S.run = null;
    setFlow({ format: "flowmill/1", id: `flow-${hex4()}`, nodes: [], edges: [] });
  }

  async function openFlow(id, { keepRun = false } = {}) {
    let reply;
    try {
      reply = await api("GET", `/api/flows/${enc(id)}`);
    } catch (error) {
      toast(`Cannot open flow ${id}: ${error.message}`, "error");
      if (!S.flow) newFlow();
      return;
    }
    if (!keepRun) S.run = null;
    setFlow(reply.flow, { serverId: id, hash: reply.hash });
    if (!keepRun) loadLastRun(id);
  }

  function confirmDiscard() {
    return !isDirty() || window.confirm("Discard the unsaved changes of this flow?");
  }

  async function refreshFlowList() {
    const select = $("flow-open");
    let flows;
    try { flows = await api("GET", "/api/flows"); } catch (error) { return; }
    flows.sort((a, b) => String(a.name || a.id).localeCompare(String(b.name || b.id)));
    select.replaceChildren(el("option", { value: "" }, "Open…"),
      ...flows.map((f) => el("option", { value: f.id }, f.name ? `${f.name} (${f.id})` : f.id)));
    select.value = "";
    select.title = flows.length ? `Open one of ${flows.length} flows on the server` : "No flows on the server yet";
  }

  async function save() {
    if (!S.canWrite || S.saving) return;
    const flow = clone(S.flow);
    const text = stableText(flow);
    const existing = S.serverId && S.serverId === flow.id;
    S.saving = true;
    updateButtons();
    try {
      const reply = existing
        ? await api("PUT", `/api/flows/${enc(flow.id)}`, { flow, base_hash: S.hash })
        : await api("POST", "/api/flows", { flow });
      S.serverId = flow.id;
      S.hash = reply.hash;
      S.savedText = text;
      history.replaceState(null, "", `/editor/${enc(flow.id)}`);
      dismissSavedNotice();
      toast(`Saved “${flow.name || flow.id}”`, "ok", { ms: 2500 });
      refreshFlowList();
      renderPanel(); // the id is fixed from now on
    } catch (error) {
      if (error.status === 409 && existing) {
        toast(`Not saved: ${error.message}`, "error", {
          sticky: true, action: { label: "Reload", run: () => openFlow(S.serverId, { keepRun: true }) },
        });
      } else if (error.status === 422) {
        setIssues(error.details || []);
        toast("Not saved: the flow has problems (see the list on the right)", "error");
      } else {
        toast(`Not saved: ${error.message}`, "error");
      }
    } finally {
      S.saving = false;
      const held = S.heldSaves.splice(0);
      held.forEach(onFlowSaved);
      changed();
    }
  }

  function download(name, href) {
    const link = el("a", { href, download: name, hidden: true });
    document.body.append(link);
    link.click();
    link.remove();
  }

  function exportFlow() {
    const name = `${S.flow.id || "flow"}.flow.json`;
    if (S.serverId && S.serverId === S.flow.id && !isDirty()) {
      download(name, `/api/flows/${enc(S.serverId)}/export`);
      return;
    }
    // the canvas as it is now, in the canonical layout (the server's export is the reference)
    const text = JSON.stringify(canonical(S.flow), null, 2) + "\n";
    const url = URL.createObjectURL(new Blob([text], { type: "application/json" }));
    download(name, url);
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  async function importFile(file) {
    if (!file) return;
    if (file.size > MAX_FLOW_BYTES) { toast(`${file.name} is larger than 5 MiB`, "error"); return; }
    let flow;
    try {
      flow = JSON.parse(await file.text());
    } catch (error) {
      toast(`${file.name} is not valid JSON: ${error.message}`, "error");
      return;
    }
    if (!isObject(flow) || !Array.isArray(flow.nodes)) {
      toast(`${file.name} is not a flowmill/1 flow (no "nodes" list)`, "error");
      return;
    }
    if (!confirmDiscard()) return;
    let existing = null;
    if (typeof flow.id === "string" && flow.id) {
      try {
        // the list first: asking for a missing flow would log a 404 in the console
        const known = await api("GET", "/api/flows");
        if (known.some((f) => f.id === flow.id)) existing = await api("GET", `/api/flows/${enc(flow.id)}`);
      } catch (error) {
        toast(`Could not look up flow ${flow.id}: ${error.message}`, "error");
      }
    }
    S.run = null;
    setFlow(flow, existing
      ? { serverId: flow.id, hash: existing.hash, savedText: stableText(normalise(existing.flow)) }
      : { savedText: null });
    toast(existing ? `Imported ${file.name}: saving replaces flow ${flow.id}` : `Imported ${file.name} (not saved yet)`,
      "info", { ms: 4000 });
  }

  // -- validation -------------------------------------------------------------------------
  function scheduleValidate() {
    clearTimeout(S.validateTimer);
    S.validateTimer = setTimeout(validateNow, 300);
    setValidity("checking");
  }

  async function validateNow() {
    const seq = ++S.validateSeq;
    let issues;
    try {
      issues = (await api("POST", "/api/flows/validate", { flow: S.flow })).issues;
    } catch (error) {
      if (error.status === 401) return;
      issues = [{ node: null, field: null, message: error.message }];
    }
    if (seq === S.validateSeq) setIssues(issues);
  }

  function setIssues(issues) {
    S.issues = (issues || []).map((i) => ({
      node: i.node || null, field: i.field || null, message: String(i.message),
    }));
    applyIssueMarks();
    renderIssues();
    renderPanelIssues();
    setValidity(S.issues.length ? "invalid" : "valid");
  }

  function setValidity(state) {
    const badge = $("validity");
    badge.className = `fm-validity ${state}`;
    badge.textContent = state === "checking" ? "checking…"
      : state === "valid" ? "✓ valid"
        : `⚠ ${S.issues.length} problem${S.issues.length === 1 ? "" : "s"}`;
  }

  /** A friendlier text for the schema messages that say little on their own. */
  function issueText(issue) {
    const node = issue.node && nodeById(issue.node);
    const spec = node && S.catalog.get(node.type);
    if (spec && /is not valid under any of the given schemas/.test(issue.message)) {
      const one = spec.config_schema.oneOf || spec.config_schema.anyOf;
      if (one) {
        const keys = one.flatMap((s) => s.required || []);
        if (keys.length) return `set one of: ${keys.join(" or ")}`;
      }
    }
    return issue.message;
  }

  function cycleOf(issue) {
    const m = /^cycle: (.+)$/.exec(issue.message);
    return m ? m[1].split(" → ").map((s) => s.trim()) : null;
  }

  function applyIssueMarks() {
    const byNode = new Map();
    const inCycle = new Set();
    const cycleEdges = new Set();
    const missing = new Set();
    for (const issue of S.issues) {
      if (issue.node) {
        if (!byNode.has(issue.node)) byNode.set(issue.node, []);
        byNode.get(issue.node).push(issue);
        const port = /^inputs\.(.+)$/.exec(issue.field || "");
        if (port) missing.add(`${issue.node}\u0000${port[1]}`);
      }
      const cycle = cycleOf(issue);
      if (cycle) {
        cycle.forEach((id) => inCycle.add(id));
        for (let i = 0; i + 1 < cycle.length; i++) cycleEdges.add(`${cycle[i]}\u0000${cycle[i + 1]}`);
      }
    }
    for (const box of S.df.container.querySelectorAll(".drawflow-node")) {
      const id = box.dataset.nodeId;
      const own = byNode.get(id) || [];
      box.classList.toggle("has-issues", own.length > 0);
      box.classList.toggle("in-cycle", inCycle.has(id));
      const line = box.querySelector(".fm-card-issue");
      if (line) {
        line.textContent = own.length ? issueText(own[0]) + (own.length > 1 ? ` (+${own.length - 1} more)` : "") : "";
        line.title = own.map(issueText).join("\n");
      }
      box.querySelectorAll(".inputs > .input").forEach((port) => {
        port.classList.toggle("port-missing", missing.has(`${id}\u0000${port.dataset.port}`));
      });
    }
    for (const svg of S.df.container.querySelectorAll(".connection.fm-edge-cycle")) {
      svg.classList.remove("fm-edge-cycle");
    }
    for (const edge of S.flow.edges) {
      if (cycleEdges.has(`${edge.source}\u0000${edge.target}`)) {
        edgeEls(edge).forEach((svg) => svg.classList.add("fm-edge-cycle"));
      }
    }
  }

  function renderIssues() {
    const box = $("issues");
    box.classList.toggle("has-issues", S.issues.length > 0);
    if (!S.issues.length) {
      box.replaceChildren(el("div", { class: "fm-issues-ok" }, "✓ No problems found"));
      return;
    }
    const items = S.issues.map((issue) => {
      const where = issue.node
        ? el("button", { type: "button", class: "fm-issue-node link-like", title: "Select this node",
          onclick: () => { if (S.dfOf.has(issue.node)) { selectNodes([issue.node]); scrollToNode(issue.node); } } },
        nodeLabel(issue.node))
        : el("span", { class: "fm-issue-node" }, "flow");
      return el("li", { class: cycleOf(issue) ? "is-cycle" : "", "data-node": issue.node || "" },
        where, issue.field ? el("code", { class: "fm-issue-field" }, issue.field) : null,
        el("span", { class: "fm-issue-msg" }, issueText(issue)));
    });
    box.replaceChildren(
      el("div", { class: "fm-issues-head" }, `⚠ ${S.issues.length} problem${S.issues.length === 1 ? "" : "s"}`),
      el("ul", {}, items));
  }

  function scrollToNode(id) {
    const box = nodeEl(id);
    if (!box) return;
    const c = S.df.container;
    const z = S.df.zoom;
    const cx = box.offsetLeft + box.offsetWidth / 2;
    const cy = box.offsetTop + box.offsetHeight / 2;
    const rect = box.getBoundingClientRect();
    const view = c.getBoundingClientRect();
    const inside = rect.left >= view.left && rect.right <= view.right && rect.top >= view.top
      && rect.bottom <= view.bottom;
    if (inside) return;
    setView(z, z * (c.clientWidth / 2 - cx), z * (c.clientHeight / 2 - cy));
  }

  // -- side panel -------------------------------------------------------------------------
  function renderPanel() {
    const panel = $("config-panel");
    if (!S.flow) return;
    if (S.selection.size === 1 && nodeById(S.primary)) panel.replaceChildren(...nodePanel(nodeById(S.primary)));
    else if (S.selection.size > 1) panel.replaceChildren(...multiPanel());
    else panel.replaceChildren(...flowPanel());
    renderPanelIssues();
  }

  function renderPanelIssues() {
    const panel = $("config-panel");
    const nodeId = panel.dataset.node || null;
    const mine = S.issues.filter((i) => (i.node || null) === nodeId);
    const fields = [...panel.querySelectorAll("[data-field]")];
    const placed = new Set();
    for (const row of fields) {
      const key = row.dataset.field;
      const hits = mine.filter((i) => i.field && (i.field === key || i.field.startsWith(`${key}.`)
        || i.field.startsWith(`${key}[`)));
      hits.forEach((i) => placed.add(i));
      row.classList.toggle("has-issue", hits.length > 0);
      const slot = row.querySelector(":scope > .fm-field-issue");
      if (slot) slot.textContent = hits.map(issueText).join("; ");
    }
    const rest = panel.querySelector(".fm-panel-issues");
    if (rest) {
      const left = mine.filter((i) => !placed.has(i));
      rest.replaceChildren(...left.map((i) => el("div", { class: "fm-panel-issue" },
        i.field ? el("code", {}, i.field) : null, issueText(i))));
    }
  }

  function section(title, ...children) {
    return el("section", { class: "fm-section" }, title ? el("h3", {}, title) : null, ...children);
  }

  /** A muted text cut to a few lines; a click shows all of it. */
  function expandable(cls, text) {
    const toggle = (event) => event.currentTarget.classList.toggle("open");
    return el("div", { class: cls, title: "click to show all", onclick: toggle }, text);
  }

  const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

  function fieldRow(key, label, widget, { help, required, inline } = {}) {
    const focus = widget.matches("input, select, textarea") ? widget : widget.querySelector("input, select, textarea");
    return el("div", { class: `fm-field${inline ? " inline" : ""}`, "data-field": key },
      inline ? el("label", { class: "fm-check" }, widget, " ", label)
        : el("label", { class: "fm-label", for: (focus && focus.id) || null }, label,
          required ? el("span", { class: "fm-req", title: "required" }, " *") : null),
      inline ? null : widget,
      help ? expandable("fm-help", help) : null,
      el("div", { class: "fm-field-issue", role: "status" }));
  }

  function flowPanel() {
    const panel = $("config-panel");
    panel.dataset.node = "";
    const flow = S.flow;
    const setTop = (key, value) => {
      if (value === "" || value === undefined) delete flow[key];
      else flow[key] = value;
      commit(`flow:${key}`);
    };
    const idInput = setValue(el("input", { id: "flow-id", name: "flow.id", class: "code", autocomplete: "off",
      readonly: !!S.serverId, spellcheck: "false",
      title: S.serverId ? "the id is fixed once the flow is saved" : "lower-case letters, digits, - and _" }), flow.id);
    idInput.addEventListener("input", () => { flow.id = idInput.value.trim(); commit("flow:id"); });
    const nameInput = setValue(el("input", { id: "flow-name", name: "flow.name", autocomplete: "off" }), flow.name);
    nameInput.addEventListener("input", () => setTop("name", nameInput.value));
    const desc = setValue(el("textarea", { id: "flow-description", name: "flow.description", rows: 3 }),
      flow.description);
    desc.addEventListener("input", () => setTop("description", desc.value));
    const form = el("fieldset", { class: "fm-form", disabled: !S.canWrite },
      section(null,
        fieldRow("id", "Flow id", idInput, {
          required: true,
          help: S.serverId ? "Fixed once the flow is saved."
            : "Lower-case letters, digits, “-” and “_”; the file name and the URL use it.",
        }),
        fieldRow("name", "Name", nameInput),
        fieldRow("description", "Description", desc, { help: "What the flow does, for the next person." })),
      section("Run parameters", paramsEditor()));
    return [
      el("div", { class: "fm-panel-head" }, el("h2", {}, "Flow settings"),
        el("span", { class: "muted" }, `${plural(flow.nodes.length, "node")} · ${plural(flow.edges.length, "edge")}`)),
      el("div", { class: "fm-panel-issues" }),
      form,
      el("p", { class: "fm-panel-hint muted" }, S.canWrite
        ? "Select a node to edit its settings; Shift+click selects several. Ctrl+C / Ctrl+V copy and paste, "
          + "Delete removes, Ctrl+Z undoes."
        : "You can look at this flow, but your role may not change it."),
    ];
  }

  function paramsEditor() {
    const flow = S.flow;
    const rows = Object.entries(isObject(flow.params) ? flow.params : {})
      .map(([name, spec]) => ({ name, spec: isObject(spec) ? { ...spec } : {} }));
    const list = el("div", { class: "fm-params", "data-field": "params" });
    const write = () => {
      const params = {};
      for (const row of rows) if (row.name) params[row.name] = row.spec;
      if (Object.keys(params).length) flow.params = params;
      else delete flow.params;
      commit("flow:params");
    };
    const parse = (type, text) => {
      if (text === "") return undefined;
      if ((type === "number" || type === "integer") && /^-?\d+(\.\d+)?([eE][-+]?\d+)?$/.test(text.trim())) {
        return type === "integer" ? parseInt(text, 10) : Number(text);
      }
      return text;
    };
    const rowEl = (row) => {
      const name = setValue(el("input", { class: "code fm-param-name", placeholder: "name",
        "aria-label": "parameter name", spellcheck: "false" }), row.name);
      const type = el("select", { class: "fm-param-type", "aria-label": "parameter type" },
        PARAM_TYPES.map((t) => el("option", { value: t }, t)));
      type.value = PARAM_TYPES.includes(row.spec.type) ? row.spec.type : "string";
      const defaultBox = el("span", { class: "fm-param-default" });
      const drawDefault = () => {
        let input;
        if (type.value === "boolean") {
          input = el("input", { type: "checkbox", "aria-label": "default value", title: "default" });
          input.checked = row.spec.default === true;
          input.addEventListener("change", () => { row.spec.default = input.checked; write(); });
        } else {
          input = setValue(el("input", { class: "fm-param-value", placeholder: "default",
            "aria-label": "default value" }),
            row.spec.default === undefined ? "" : row.spec.default);
          input.addEventListener("input", () => {
            const value = parse(type.value, input.value);
            if (value === undefined) delete row.spec.default; else row.spec.default = value;
            write();
          });
        }
        defaultBox.replaceChildren(input);
      };
      drawDefault();
      const req = el("input", { type: "checkbox", title: "required", "aria-label": "required" });
      req.checked = row.spec.required === true;
      name.addEventListener("input", () => { row.name = name.value.trim(); write(); });
      type.addEventListener("change", () => {
        row.spec.type = type.value;
        if (type.value === "boolean") row.spec.default = row.spec.default === true;
        else if (row.spec.default !== undefined) {
          const value = parse(type.value, String(row.spec.default));
          if (value === undefined) delete row.spec.default; else row.spec.default = value;
        }
        drawDefault();
        write();
      });
      req.addEventListener("change", () => {
        if (req.checked) row.spec.required = true;
        else delete row.spec.required;
        write();
      });
      const remove = el("button", { type: "button", class: "fm-icon", title: "remove", "aria-label": "remove parameter",
        onclick: () => { rows.splice(rows.indexOf(row), 1); line.remove(); write(); } }, "×");
      const line = el("div", { class: "fm-param-row" }, name, type, defaultBox,
        el("label", { class: "fm-check small", title: "required" }, req, "req."), remove);
      return line;
    };
    const body = el("div", { class: "fm-param-rows" }, rows.map(rowEl));
    const add = el("button", { type: "button", class: "fm-add", onclick: () => {
      const row = { name: "", spec: { type: "string" } };
      rows.push(row);
      const line = rowEl(row);
      body.append(line);
      line.querySelector("input").focus();
    } }, "+ Add parameter");
    fill(list,
      rows.length ? null : el("p", { class: "muted small" },
        "No parameters. A run can pass values that expressions and ${name} placeholders use."),
      body, add, el("div", { class: "fm-field-issue" }));
    return list;
  }

  function multiPanel() {
    $("config-panel").dataset.node = "";
    const ids = [...S.selection];
    return [
      el("div", { class: "fm-panel-head" }, el("h2", {}, `${ids.length} nodes selected`)),
      el("ul", { class: "fm-multi" }, ids.map((id) => {
        const spec = S.catalog.get((nodeById(id) || {}).type);
        return el("li", {}, el("code", {}, id), " ", spec ? spec.title : "");
      })),
      el("div", { class: "fm-row" },
        el("button", { type: "button", onclick: copySelection }, "Copy"),
        S.canWrite ? el("button", { type: "button", class: "danger", onclick: deleteSelection }, "Delete") : null),
    ];
  }

  function nodePanel(node) {
    const panel = $("config-panel");
    panel.dataset.node = node.id;
    const spec = S.catalog.get(node.type);
    const cfg = node.config;
    const key = (k) => `cfg:${node.id}:${k}`;
    const setConfig = (k, value) => {
      if (value === undefined) delete cfg[k];
      else cfg[k] = value;
      updateNodeCard(node);
      commit(key(k));
    };
    const nameInput = setValue(el("input", { id: "node-name", name: "node.name", autocomplete: "off",
      placeholder: node.id }), node.name);
    nameInput.addEventListener("input", () => {
      if (nameInput.value) node.name = nameInput.value; else delete node.name;
      updateNodeCard(node);
      commit(key("name"));
    });
    const disabled = el("input", { type: "checkbox", id: "node-disabled", name: "node.disabled" });
    disabled.checked = node.disabled === true;
    disabled.addEventListener("change", () => {
      if (disabled.checked) node.disabled = true; else delete node.disabled;
      updateNodeCard(node);
      commit(key("disabled"));
    });
    const head = el("div", { class: "fm-panel-head" },
      el("span", { class: `fm-cat-badge cat-${cssName(spec ? spec.category : "unknown")}` },
        spec ? spec.category : "?"),
      el("h2", {}, spec ? spec.title : node.type),
      el("code", { class: "fm-node-id", title: "node id (never changes)" }, node.id));
    const parts = [head];
    if (spec && spec.description) {
      parts.push(expandable("fm-desc", spec.description));
    }
    parts.push(el("div", { class: "fm-panel-issues" }));
    const general = section(null,
      fieldRow("name", "Name", nameInput, { help: "Shown on the canvas; the id stays the same." }),
      fieldRow("disabled", "Disabled (skipped; its outputs are empty)", disabled, { inline: true }));
    const form = el("fieldset", { class: "fm-form", disabled: !S.canWrite }, general);
    if (!spec) {
      form.append(section("Config (JSON)", fieldRow("config", "config", jsonEditor(cfg, (v) => {
        node.config = isObject(v) ? v : {};
        commit(key("config"));
      }))));
    } else {
      const schema = spec.config_schema || {};
      const props = schema.properties || {};
      const required = new Set(schema.required || []);
      const rank = (k) => (FIELD_ORDER.includes(k) ? FIELD_ORDER.indexOf(k)
        : FIELD_ORDER.length + (required.has(k) ? 0 : 1));
      const own = Object.keys(props).filter((k) => !COMMON_KEYS.includes(k)).sort((a, b) => rank(a) - rank(b));
      const settings = own.map((k) => configField(node, k, props[k], required.has(k), setConfig));
      if (settings.length) form.append(section("Settings", ...settings));
      const common = COMMON_KEYS.filter((k) => props[k])
        .map((k) => configField(node, k, props[k], required.has(k), setConfig));
      if (common.length) {
        const open = COMMON_KEYS.some((k) => cfg[k] !== undefined)
          || S.issues.some((i) => i.node === node.id && COMMON_KEYS.includes(String(i.field).split(".")[0]));
        form.append(el("details", { class: "fm-section fm-common", open },
          el("summary", {}, "Errors, retries and timeout"), ...common));
      }
      const unknown = Object.keys(cfg).filter((k) => !props[k]);
      if (unknown.length) {
        form.append(section("Other keys", ...unknown.map((k) => el("div", { class: "fm-field", "data-field": k },
          el("span", { class: "fm-label" }, el("code", {}, k), " (not in the schema)"),
          el("button", { type: "button", class: "danger",
            onclick: () => { setConfig(k, undefined); renderPanel(); } }, "Remove"),
          el("div", { class: "fm-field-issue" })))));
      }
    }
    parts.push(form);
    return parts;
  }

  /** One config field, its widget chosen from the schema. */
  function configField(node, key, schema, required, setConfig) {
    const value = node.config[key];
    const title = schema.title || humanize(key);
    const help = schema.description;
    const id = `cfg-${key}`;
    const type = Array.isArray(schema.type) ? schema.type.find((t) => t !== "null") : schema.type;
    const fmt = schema.format || schema["x-format"] || schema["x-widget"];
    const dflt = schema.default;
    const set = (v) => setConfig(key, v);
    const withDefault = (v) => (v === dflt && !required ? undefined : v);

    if (isObject(value) && typeof value.$secret === "string" && Object.keys(value).length === 1) {
      return fieldRow(key, title, secretEditor(id, key, value.$secret, set), { help, required });
    }
    if (Array.isArray(schema.enum)) {
      const select = el("select", { id, name: `cfg.${key}` });
      if (dflt === undefined) select.append(el("option", { value: "" }, "—"));
      schema.enum.forEach((option, i) => select.append(el("option", { value: String(i) },
        `${option}${option === dflt ? " (default)" : ""}`)));
      const current = value !== undefined ? value : dflt;
      const index = schema.enum.findIndex((o) => o === current);
      select.value = index >= 0 ? String(index) : "";
      select.addEventListener("change", () => {
        set(select.value === "" ? undefined : withDefault(schema.enum[Number(select.value)]));
      });
      return fieldRow(key, title, select, { help, required });
    }
    if (type === "boolean") {
      const box = el("input", { type: "checkbox", id, name: `cfg.${key}` });
      box.checked = value !== undefined ? value === true : dflt === true;
      box.addEventListener("change", () => set(withDefault(box.checked)));
      return fieldRow(key, title, box, { help, inline: true });
    }
    if ((type === "integer" || type === "number") && typeof value !== "string") {
      const input = setValue(el("input", { type: "number", id, name: `cfg.${key}`,
        step: type === "integer" ? "1" : "any", min: schema.minimum, max: schema.maximum,
        placeholder: dflt !== undefined ? String(dflt) : "" }), value);
      input.addEventListener("input", () => {
        if (input.value === "") { set(undefined); return; }
        const n = type === "integer" ? parseInt(input.value, 10) : Number(input.value);
        if (Number.isFinite(n)) set(n);
      });
      return fieldRow(key, title, input, { help, required });
    }
    if (type === "string" || (type === undefined && typeof value === "string") || typeof value === "string") {
      if (fmt === "connection" || key === "connection") {
        return fieldRow(key, title, connectionPicker(id, key, value, set), { help, required });
      }
      const code = fmt === "sql" || fmt === "expression" || CODE_NAMES.test(key);
      if (code) {
        const area = setValue(el("textarea", { id, name: `cfg.${key}`, class: "code", spellcheck: "false",
          rows: fmt === "sql" ? 5 : 2,
          placeholder: fmt === "expression" ? "expression, e.g. qty > 0 and status != 'cancelled'" : "" }), value);
        area.addEventListener("input", () => set(area.value === "" ? undefined : area.value));
        return fieldRow(key, title, area, { help, required });
      }
      const input = setValue(el("input", { id, name: `cfg.${key}`, autocomplete: "off", spellcheck: "false",
        placeholder: dflt !== undefined && dflt !== "" ? String(dflt) : "",
        list: schema.examples ? `${id}-examples` : null }), value);
      input.addEventListener("input", () => set(input.value === "" ? undefined : input.value));
      const parts = [input];
      if (schema.examples) {
        parts.push(el("datalist", { id: `${id}-examples` }, schema.examples.map((e) => el("option", { value: e }))));
      }
      if (SECRET_NAMES.test(key)) {
        parts.push(el("button", { type: "button", class: "fm-secret-toggle",
          title: "use a stored secret instead of a plain value",
          onclick: () => { set({ $secret: "" }); renderPanel(); } }, "🔒 secret"));
      }
      return fieldRow(key, title, el("div", { class: "fm-inline" }, ...parts), { help, required });
    }
    if (type === "array") {
      const items = schema.items || {};
      const itemSchemas = items.anyOf || items.oneOf || [items];
      const stringItems = itemSchemas.some((s) => s.type === "string");
      const allStrings = value === undefined || (Array.isArray(value) && value.every((v) => typeof v === "string"));
      if (stringItems && allStrings) {
        return fieldRow(key, title, listEditor(id, key, value || [], items.enum, (list) => {
          set(list.length ? list : (required ? [] : undefined));
        }), { help, required });
      }
    }
    if (type === "object" && (value === undefined || isObject(value))) {
      const extra = schema.additionalProperties;
      const valueSchema = isObject(extra) ? extra : null;
      if (extra !== false || !schema.properties) {
        return fieldRow(key, title, mapEditor(id, key, value || {}, valueSchema, (map) => {
          set(Object.keys(map).length ? map : (required ? {} : undefined));
        }), { help, required });
      }
    }
    return fieldRow(key, title, jsonEditor(value, set, id), { help, required });
  }

  function connectionPicker(id, key, value, set) {
    if (!S.connections) {
      const input = setValue(el("input", { id, name: `cfg.${key}`, placeholder: "connection name",
        autocomplete: "off" }), value);
      input.addEventListener("input", () => set(input.value === "" ? undefined : input.value));
      return input;
    }
    const select = el("select", { id, name: `cfg.${key}` }, el("option", { value: "" }, "— none —"),
      S.connections.map((n) => el("option", { value: n }, n)));
    if (value && !S.connections.includes(value)) {
      select.append(el("option", { value }, `${value} (missing on the server)`));
    }
    select.value = value || "";
    select.addEventListener("change", () => set(select.value === "" ? undefined : select.value));
    return select;
  }

  function secretEditor(id, key, name, set) {
    const input = setValue(el("input", { id, name: `cfg.${key}`, class: "code", placeholder: "secret name",
      autocomplete: "off" }), name);
    input.addEventListener("input", () => set({ $secret: input.value }));
    return el("div", { class: "fm-inline" },
      el("span", { class: "fm-secret-badge", title: "resolved only when the node runs" }, "🔒"), input,
      el("button", { type: "button", class: "fm-secret-toggle", onclick: () => { set(undefined); renderPanel(); } },
        "plain value"));
  }

  function listEditor(id, key, values, choices, onChange) {
    const rows = [...values];
    const body = el("div", { class: "fm-list-rows" });
    const write = () => onChange(rows.filter((v) => v !== ""));
    const rowEl = (index) => {
      let input;
      if (Array.isArray(choices)) {
        input = el("select", {}, el("option", { value: "" }, "—"), choices.map((c) => el("option", { value: c }, c)));
        input.value = rows[index];
        input.addEventListener("change", () => { rows[index] = input.value; write(); });
      } else {
        input = setValue(el("input", { class: "code", autocomplete: "off", spellcheck: "false",
          "aria-label": `${key} item` }), rows[index]);
        input.addEventListener("input", () => { rows[index] = input.value; write(); });
      }
      return el("div", { class: "fm-list-row" }, input,
        el("button", { type: "button", class: "fm-icon", title: "remove", "aria-label": "remove",
          onclick: () => { rows.splice(index, 1); redrawRows(); write(); } }, "×"));
    };
    const redrawRows = () => body.replaceChildren(...rows.map((_, i) => rowEl(i)));
    redrawRows();
    const add = el("button", { type: "button", class: "fm-add", onclick: () => {
      rows.push("");
      body.append(rowEl(rows.length - 1));
      body.lastElementChild.querySelector("input, select").focus();
    } }, "+ Add");
    const wrap = el("div", { class: "fm-list", id }, body, add);
    return wrap;
  }

  function grow(area) {
    area.style.height = "auto";
    area.style.height = `${area.scrollHeight + 2}px`;
  }

  function parseLoose(text) {
    if (/^\s*(-?\d+(\.\d+)?([eE][-+]?\d+)?|true|false|null|\[.*\]|\{.*\})\s*$/.test(text)) {
      try { return JSON.parse(text); } catch (e) { /* keep the text */ }
    }
    return text;
  }

  function mapEditor(id, key, value, valueSchema, onChange) {
    const rows = Object.entries(value).map(([k, v]) => ({ k, v }));
    const body = el("div", { class: "fm-map-rows" });
    const isCode = valueSchema && (valueSchema.format === "expression" || valueSchema.format === "sql");
    const choices = valueSchema && Array.isArray(valueSchema.enum) ? valueSchema.enum : null;
    const loose = !valueSchema || (!valueSchema.type && !choices);
    const write = () => {
      const map = {};
      for (const row of rows) if (row.k !== "") map[row.k] = row.v;
      onChange(map);
    };
    const rowEl = (row) => {
      const k = setValue(el("input", { class: "fm-key code", placeholder: key === "fields" ? "field" : "name",
        autocomplete: "off", spellcheck: "false", "aria-label": "name" }), row.k);
      k.addEventListener("input", () => { row.k = k.value; write(); });
      let v;
      if (choices) {
        v = el("select", { class: "fm-val", "aria-label": "value" }, el("option", { value: "" }, "—"),
          choices.map((c) => el("option", { value: String(c) }, String(c))));
        v.value = row.v === undefined ? "" : String(row.v);
        v.addEventListener("change", () => { row.v = v.value; write(); });
      } else if (isCode) {
        v = setValue(el("textarea", { class: "fm-val code", rows: 1, spellcheck: "false", "aria-label": "expression",
          placeholder: "expression, e.g. round(price * 1.19, 2)" }), row.v);
        v.addEventListener("input", () => { row.v = v.value; grow(v); write(); });
        requestAnimationFrame(() => grow(v));
      } else {
        const shown = typeof row.v === "string" || row.v === undefined ? row.v : JSON.stringify(row.v);
        v = setValue(el("input", { class: "fm-val", autocomplete: "off", spellcheck: "false", "aria-label": "value" }),
          shown);
        v.addEventListener("input", () => { row.v = loose ? parseLoose(v.value) : v.value; write(); });
      }
      const line = el("div", { class: "fm-map-row" }, k, el("span", { class: "fm-arrow" }, "→"), v,
        el("button", { type: "button", class: "fm-icon", title: "remove", "aria-label": "remove",
          onclick: () => { rows.splice(rows.indexOf(row), 1); line.remove(); write(); } }, "×"));
      return line;
    };
    body.append(...rows.map(rowEl));
    const add = el("button", { type: "button", class: "fm-add", onclick: () => {
      const row = { k: "", v: choices ? "" : "" };
      rows.push(row);
      const line = rowEl(row);
      body.append(line);
      line.querySelector("input").focus();
    } }, key === "fields" ? "+ Add field" : "+ Add entry");
    return el("div", { class: "fm-map", id }, body, add);
  }

  function jsonEditor(value, set, id) {
    const area = setValue(el("textarea", { class: "code", rows: 4, spellcheck: "false", id }),
      value === undefined ? "" : JSON.stringify(value, null, 2));
    const note = el("div", { class: "fm-json-error error" });
    area.addEventListener("input", () => {
      if (area.value.trim() === "") { note.textContent = ""; set(undefined); return; }
      try {
        const parsed = JSON.parse(area.value);
        note.textContent = "";
        set(parsed);
      } catch (error) {
        note.textContent = `not valid JSON yet: ${error.message}`;
      }
    });
    return el("div", { class: "fm-json", id: id ? `${id}-wrap` : null }, area, note);
  }

  // -- palette ----------------------------------------------------------------------------
  function buildPalette() {
    const groups = new Map();
    for (const spec of S.catalog.values()) {
      if (!groups.has(spec.category)) groups.set(spec.category, []);
      groups.get(spec.category).push(spec);
    }
    const rank = (c) => (CATEGORY_ORDER.includes(c) ? CATEGORY_ORDER.indexOf(c) : 99);
    const categories = [...groups.keys()].sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
    const box = $("palette-groups");
    box.replaceChildren(...categories.map((category) => el("section",
      { class: "fm-palette-group", "data-category": category },
      el("h3", {}, humanize(category)),
      groups.get(category).sort((a, b) => a.title.localeCompare(b.title)).map((spec) => {
        const item = el("div", {
          class: `palette-item cat-${cssName(category)}`,
          "data-type": spec.type,
          draggable: S.canWrite ? "true" : null,
          tabindex: "0",
          role: "button",
          title: `${spec.description}${S.canWrite ? "\n\nDrag onto the canvas (or double-click) to add." : ""}`,
        }, el("span", { class: "fm-pi-title" }, spec.title), el("span", { class: "fm-pi-type" }, spec.type));
        item.addEventListener("dragstart", (event) => {
          if (!S.canWrite) { event.preventDefault(); return; }
          event.dataTransfer.setData("application/x-flowmill-type", spec.type);
          event.dataTransfer.setData("text/plain", spec.type);
          event.dataTransfer.effectAllowed = "copy";
        });
        item.addEventListener("dblclick", () => addNodeAtCentre(spec.type));
        item.addEventListener("keydown", (event) => {
          if (event.key === "Enter") { event.preventDefault(); addNodeAtCentre(spec.type); }
        });
        return item;
      }))));
    $("palette-search").addEventListener("input", (event) => {
      const q = event.target.value.trim().toLowerCase();
      for (const group of box.querySelectorAll(".fm-palette-group")) {
        let shown = 0;
        for (const item of group.querySelectorAll(".palette-item")) {
          const spec = S.catalog.get(item.dataset.type);
          const hit = !q || `${spec.title} ${spec.type} ${spec.description}`.toLowerCase().includes(q);
          item.hidden = !hit;
          if (hit) shown += 1;
        }
        group.hidden = shown === 0;
      }
    });
    if (!S.canWrite) $("palette-hint").textContent = "Read-only: your role may look at flows but not change them.";
  }

  // -- toolbar and keys -------------------------------------------------------------------
  function runBlocker() {
    if (!S.canRun) return "Your role may not run jobs";
    if (!S.serverId) return "Save the flow first";
    if (isDirty()) return "Save your changes first: a run uses the saved flow";
    return null;
  }

  function updateButtons() {
    if (!S.flow) return;
    const write = S.canWrite;
    $("btn-undo").disabled = !write || S.hIndex <= 0;
    $("btn-redo").disabled = !write || S.hIndex >= S.history.length - 1;
    $("btn-save").disabled = !write || S.saving || (!!S.serverId && S.serverId === S.flow.id && !isDirty());
    $("btn-save").title = write ? "Save (Ctrl+S)" : "Your role may not change flows";
    $("btn-copy").disabled = S.selection.size === 0;
    $("btn-paste").disabled = !write || !readClipboard();
    $("btn-delete").disabled = !write || (S.selection.size === 0 && !S.df.connection_selected);
    const blocker = runBlocker();
    $("btn-run").disabled = !!blocker;
    $("btn-run").title = blocker || "Run the saved flow now";
  }

  function wireToolbar() {
    $("btn-new").addEventListener("click", () => { if (confirmDiscard()) newFlow(); });
    $("flow-open").addEventListener("change", (event) => {
      const id = event.target.value;
      event.target.value = "";
      if (id && confirmDiscard()) openFlow(id);
    });
    $("flow-open").addEventListener("focus", refreshFlowList);
    $("btn-save").addEventListener("click", save);
    $("import-file").addEventListener("change", (event) => {
      const file = event.target.files[0];
      event.target.value = "";
      importFile(file);
    });
    $("btn-export").addEventListener("click", exportFlow);
    $("btn-undo").addEventListener("click", undo);
    $("btn-redo").addEventListener("click", redo);
    $("btn-copy").addEventListener("click", copySelection);
    $("btn-paste").addEventListener("click", paste);
    $("btn-delete").addEventListener("click", deleteSelection);
    $("btn-zoom-in").addEventListener("click", () => S.df.zoom_in());
    $("btn-zoom-out").addEventListener("click", () => S.df.zoom_out());
    $("btn-zoom-reset").addEventListener("click", () => S.df.zoom_reset());
    $("btn-fit").addEventListener("click", fitView);
    $("btn-run").addEventListener("click", () => {
      if (runBlocker()) return;
      if (isObject(S.flow.params) && Object.keys(S.flow.params).length) openRunDialog();
      else startRun({});
    });
    $("run-cancel").addEventListener("click", () => $("run-dialog").close());
    $("run-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const params = collectRunParams();
      if (!params) return;
      $("run-dialog").close();
      startRun(params);
    });
    window.addEventListener("beforeunload", (event) => {
      if (S.canWrite && isDirty()) { event.preventDefault(); event.returnValue = ""; }
    });
  }

  function wireKeys() {
    document.addEventListener("keydown", (event) => {
      const target = event.target;
      if ($("run-dialog").open) return;
      if (target instanceof Element && target.closest("input, textarea, select, [contenteditable]")) return;
      const mod = event.ctrlKey || event.metaKey;
      const key = event.key.toLowerCase();
      if (mod && key === "z" && !event.shiftKey) { event.preventDefault(); undo(); }
      else if (mod && (key === "y" || (key === "z" && event.shiftKey))) { event.preventDefault(); redo(); }
      else if (mod && key === "s") { event.preventDefault(); save(); }
      else if (mod && key === "c") {
        if (String(window.getSelection() || "") === "" && copySelection()) event.preventDefault();
      } else if (mod && key === "v") { event.preventDefault(); paste(); }
      else if (mod && key === "a" && target.closest && target.closest("#canvas")) {
        event.preventDefault();
        selectNodes(S.flow.nodes.map((n) => n.id));
      } else if (event.key === "Delete" || (event.key === "Backspace" && target.closest && target.closest("#canvas"))) {
        if (S.selection.size || S.df.connection_selected) { event.preventDefault(); deleteSelection(); }
      } else if (event.key === "Escape") {
        selectNodes([]);
      }
    });
  }

  // -- running ----------------------------------------------------------------------------
  function openRunDialog() {
    const box = $("run-params");
    $("run-dialog-flow").textContent = S.flow.name || S.flow.id;
    box.replaceChildren(...Object.entries(S.flow.params).map(([name, spec]) => {
      spec = isObject(spec) ? spec : {};
      const type = spec.type || "string";
      const dflt = spec.default;
      let input;
      if (Array.isArray(spec.enum)) {
        input = el("select", {}, spec.enum.map((v) => el("option", { value: String(v) }, String(v))));
        input.value = dflt === undefined ? String(spec.enum[0]) : String(dflt);
      } else if (type === "boolean") {
        input = el("input", { type: "checkbox" });
        input.checked = dflt === true;
      } else {
        input = setValue(el("input", { type: "text", class: type === "string" ? null : "code",
          placeholder: type === "date" ? "YYYY-MM-DD" : type, required: spec.required && dflt === undefined }), dflt);
      }
      input.dataset.param = name;
      input.dataset.type = type;
      input.name = `param.${name}`;
      return el("label", { class: type === "boolean" ? "fm-check" : "fm-run-param" },
        type === "boolean" ? input : null,
        el("span", {}, spec.title || name, el("code", { class: "muted" }, ` ${name}`)),
        type === "boolean" ? null : input,
        spec.description ? el("small", { class: "muted" }, spec.description) : null);
    }));
    $("run-dialog").showModal();
  }

  /** Only values that differ from the defaults are sent: defaults stay the flow's, with
   * their placeholders resolved on the server. */
  function collectRunParams() {
    const params = {};
    for (const input of $("run-params").querySelectorAll("[data-param]")) {
      const name = input.dataset.param;
      const spec = S.flow.params[name] || {};
      const dflt = spec.default;
      if (input.type === "checkbox") {
        if (input.checked !== (dflt === true)) params[name] = input.checked;
        continue;
      }
      const text = input.value;
      if (dflt !== undefined && text === String(dflt)) continue;
      if (text === "" && !spec.required) continue;
      const type = input.dataset.type;
      if (type === "number" || type === "integer") {
        const n = Number(text);
        if (!Number.isFinite(n) || (type === "integer" && !Number.isInteger(n))) {
          toast(`${name}: “${text}” is not ${type === "integer" ? "an integer" : "a number"}`, "error");
          return null;
        }
        params[name] = n;
      } else {
        params[name] = text;
      }
    }
    return params;
  }

  async function startRun(params) {
    S.starting = true;
    try {
      const job = await api("POST", `/api/flows/${enc(S.serverId)}/run`, { params });
      setRun(newRun(job.id, job.run_id || null, job.state));
      (S.jobBuf.get(job.id) || []).forEach(applyJobChanged);
    } catch (error) {
      toast(`Could not start the run: ${error.message}`, "error");
    } finally {
      S.starting = false;
    }
  }

  function newRun(jobId, runId, state) {
    return { jobId, runId, jobState: state || "queued", runState: null, error: null, errorNode: null,
      seconds: null, nodes: {}, log: [], done: false, last: false };
  }

  function setRun(run) {
    S.run = run;
    if (run && run.runId) (S.runBuf.get(run.runId) || []).forEach((ev) => applyRunEvent(ev, false));
    renderRun();
  }

  /** Show the flow's latest job (the "last run" the inspector starts with). */
  async function loadLastRun(flowId) {
    try {
      const jobs = await api("GET", `/api/jobs?flow=${enc(flowId)}&limit=1`);
      if (!jobs.length || S.serverId !== flowId) { setRun(null); return; }
      const run = newRun(jobs[0].id, jobs[0].run_id, jobs[0].state);
      run.last = true;
      setRun(run);
      await syncRun();
    } catch (error) {
      setRun(null);
    }
  }

  function bounded(map, key, item, keys = 50, per = 5000) {
    if (!map.has(key)) {
      map.set(key, []);
      if (map.size > keys) map.delete(map.keys().next().value);
    }
    const list = map.get(key);
    list.push(item);
    if (list.length > per) list.shift();
  }

  function onLive(ev) {
    switch (ev.event) {
      case "Connected":
        if (S.connectedOnce) onReconnect();
        S.connectedOnce = true;
        return;
      case "FlowSaved":
        onFlowSaved(ev);
        return;
      case "JobChanged":
        bounded(S.jobBuf, ev.job_id, ev, 100, 50);
        if (S.run && ev.job_id === S.run.jobId) { applyJobChanged(ev); return; }
        // a job of this flow started elsewhere (dashboard, schedule): follow it when idle
        if (S.serverId && ev.flow_id === S.serverId && ev.state === "running" && !S.starting
            && (!S.run || S.run.done)) {
          setRun(newRun(ev.job_id, null, ev.state));
          applyJobChanged(ev);
        }
        return;
      case "ServerHeartbeat":
        return;
      default:
        if (!ev.run_id) return;
        bounded(S.runBuf, ev.run_id, ev);
        if (S.run && ev.run_id === S.run.runId) applyRunEvent(ev, true);
    }
  }

  async function onReconnect() {
    if (S.run && !S.run.done) syncRun();
    if (!S.serverId || S.saving) return;
    try {
      const reply = await api("GET", `/api/flows/${enc(S.serverId)}`);
      if (reply.hash !== S.hash) {
        showSavedNotice("This flow was changed on the server while the connection was down — reload?");
      }
    } catch (error) {
      if (error.status === 404) showSavedNotice("This flow was removed from the server.", false);
    }
  }

  function applyJobChanged(ev) {
    const run = S.run;
    if (!run || ev.job_id !== run.jobId) return;
    run.jobState = ev.state;
    if (ev.error) run.error = ev.error;
    if (ev.run_id && ev.run_id !== run.runId) {
      run.runId = ev.run_id;
      run.nodes = {}; // a retry is a new run
      run.log = [];
      (S.runBuf.get(ev.run_id) || []).forEach((e) => applyRunEvent(e, false));
    }
    if (FINAL_JOB_STATES.has(ev.state)) {
      run.done = true;
      setTimeout(syncRun, 200); // counts, samples and the whole log from the store
    }
    renderRun();
  }

  function applyRunEvent(ev, render) {
    const run = S.run;
    const id = ev.node_id;
    const node = id && ev.event !== "LogEmitted"
      ? (run.nodes[id] = run.nodes[id] || { state: "queued", records_in: {}, records_out: {} }) : null;
    switch (ev.event) {
      case "RunStarted":
        run.runState = "running";
        break;
      case "NodeStarted":
        Object.assign(node, { state: "running", attempts: ev.attempt, progress: 0 });
        break;
      case "NodeRetrying":
        Object.assign(node, { state: "retrying", error: ev.error, attempts: ev.attempt });
        break;
      case "NodeProgress":
        node.progress = ev.records;
        if (node.state === "queued") node.state = "running";
        break;
      case "NodeFinished":
        Object.assign(node, { state: ev.state, records_in: ev.records_in || {}, records_out: ev.records_out || {},
          sample: ev.sample || {}, error: ev.error, seconds: ev.seconds, attempts: ev.attempts });
        break;
      case "NodeSkipped":
        Object.assign(node, { state: "skipped", error: ev.reason, records_in: ev.records_in || {},
          records_out: ev.records_out || {} });
        break;
      case "LogEmitted":
        run.log.push({ at: ev.at, node: id || null, where: id ? `node ${id}` : "run", level: ev.level,
          message: ev.message });
        break;
      case "RunFinished":
        Object.assign(run, { runState: ev.state, seconds: ev.seconds, error: ev.error || run.error,
          errorNode: ev.error_node });
        break;
      default:
        return;
    }
    if (render) renderRun();
  }

  /** The job, its run's nodes and its log as the store has them. */
  async function syncRun() {
    const run = S.run;
    if (!run) return;
    try {
      const job = await api("GET", `/api/jobs/${run.jobId}`);
      if (S.run !== run) return;
      run.jobState = job.state;
      run.error = job.error || run.error;
      if (FINAL_JOB_STATES.has(job.state)) run.done = true;
      if (job.run) {
        if (job.run.run_id !== run.runId) { run.runId = job.run.run_id; run.nodes = {}; }
        run.runState = job.run.state;
        run.error = job.run.error || run.error;
        run.errorNode = job.run.error_node;
        if (job.run.started_at && job.run.finished_at) {
          run.seconds = (Date.parse(job.run.finished_at) - Date.parse(job.run.started_at)) / 1000;
        }
        for (const n of job.run.nodes) {
          run.nodes[n.node] = { ...(run.nodes[n.node] || {}), state: n.state, records_in: n.records_in || {},
            records_out: n.records_out || {}, sample: n.sample || {}, error: n.error, seconds: n.seconds,
            attempts: n.attempts };
        }
      }
      const log = await api("GET", `/api/jobs/${run.jobId}/log`);
      if (S.run !== run) return;
      if (run.done || log.lines.length >= run.log.length) run.log = log.lines.map(parseLogLine);
    } catch (error) {
      if (error.status !== 404) console.warn("could not load the job", error);
    }
    renderRun();
  }

  function parseLogLine(line) {
    const m = /^(\S+) (job|run|node (\S+)): (.*)$/.exec(line);
    if (!m) return { at: null, node: null, where: "", level: "", message: line };
    const rest = m[2] === "job" ? null : /^(DEBUG|INFO|WARNING|ERROR|CRITICAL) (.*)$/.exec(m[4]);
    return { at: m[1], node: m[3] || null, where: m[2], level: rest ? rest[1] : "", message: rest ? rest[2] : m[4] };
  }

  /** Records over all ports (but ``skip``) of a {port: count} dict. */
  const sum = (counts, skip) => Object.entries(counts || {})
    .reduce((total, [port, n]) => (port === skip ? total : total + (Number(n) || 0)), 0);
  const STATES = ["queued", "running", "retrying", "succeeded", "failed", "skipped"];
  const STATE_MARK = { running: "●", retrying: "↻", succeeded: "✓", failed: "✕", skipped: "–" };

  function countsText(nodeId, st) {
    const ports = S.ports.get(nodeId) || { inputs: [] };
    const parts = [];
    if (ports.inputs.length) parts.push(`in ${sum(st.records_in).toLocaleString()}`);
    if (st.state === "running" || st.state === "retrying") {
      parts.push(`out ${(st.progress || sum(st.records_out, "error")).toLocaleString()}…`);
    } else {
      parts.push(`out ${sum(st.records_out, "error").toLocaleString()}`);
    }
    const errors = (st.records_out || {}).error;
    if (errors) parts.push(`error ${errors}`);
    return parts.join(" · ");
  }

  function applyRunStates() {
    const run = S.run;
    for (const box of S.df.container.querySelectorAll(".drawflow-node")) {
      const id = box.dataset.nodeId;
      const st = run && run.nodes[id];
      box.classList.remove(...STATES.map((state) => `state-${state}`));
      const counts = box.querySelector(".node-counts");
      const badge = box.querySelector(".fm-card-state");
      if (!st) {
        counts.textContent = "";
        counts.removeAttribute("data-in");
        counts.removeAttribute("data-out");
        badge.textContent = "";
        continue;
      }
      box.classList.add(`state-${st.state}`);
      counts.textContent = countsText(id, st);
      counts.dataset.in = String(sum(st.records_in));
      counts.dataset.out = String(sum(st.records_out, "error"));
      counts.title = st.error || "";
      badge.textContent = STATE_MARK[st.state] || "";
      badge.title = st.state;
    }
  }

  function renderRun() {
    applyRunStates();
    const run = S.run;
    const summaryEl = $("run-summary");
    const insp = $("inspector");
    insp.classList.toggle("has-run", !!run);
    if (S.inspectorChoice === null) setInspectorOpen(!!run);
    if (!run) {
      fill(summaryEl, !S.canRun ? "No run to show."
        : S.serverId ? "No run of this flow yet. Press “Run now”." : "No run yet. Save the flow and press “Run now”.");
    } else {
      const state = run.done ? (run.runState || run.jobState) : run.jobState;
      fill(summaryEl,
        el("span", { class: `state ${state}`, id: "run-state", "data-state": state }, state),
        " ", run.last ? el("span", { class: "muted" }, "last run · ") : null,
        `job #${run.jobId}`,
        run.runId ? el("span", { class: "muted" }, ` · run ${String(run.runId).slice(0, 12)}`) : null,
        run.seconds !== null && run.seconds !== undefined ? ` · ${Flowmill.fmtSeconds(run.seconds)}` : null,
        run.error ? el("span", { class: "error" }, ` · ${run.errorNode ? `${run.errorNode}: ` : ""}${run.error}`)
          : null);
    }
    const body = $("run-nodes").tBodies[0];
    const at = (n, axis) => (isObject(n.ui) && Number(n.ui[axis])) || 0;
    const nodes = [...S.flow.nodes].sort((a, b) => at(a, "x") - at(b, "x") || at(a, "y") - at(b, "y"));
    body.replaceChildren(...nodes.map((node) => {
      const st = (run && run.nodes[node.id]) || null;
      return el("tr", { "data-node": node.id, class: S.selection.has(node.id) ? "selected" : "",
        onclick: () => { selectNodes([node.id]); scrollToNode(node.id); } },
      el("td", {}, node.name || node.id),
      el("td", {}, st ? el("span", { class: `state ${st.state}` }, st.state) : el("span", { class: "muted" }, "—")),
      el("td", { class: "num" }, st && (S.ports.get(node.id) || { inputs: [1] }).inputs.length
        ? sum(st.records_in).toLocaleString() : ""),
      el("td", { class: "num" }, st ? sum(st.records_out, "error").toLocaleString() : ""),
      el("td", { class: "num" }, st && st.seconds != null ? Flowmill.fmtSeconds(st.seconds) : ""));
    }));
    renderInspectorDetail();
  }

  function highlightRunRow() {
    for (const row of $("run-nodes").tBodies[0].rows) {
      row.classList.toggle("selected", S.selection.has(row.dataset.node));
    }
  }

  function wireInspector() {
    $("inspector-toggle").addEventListener("click", () => {
      S.inspectorChoice = $("inspector").classList.contains("collapsed");
      setInspectorOpen(S.inspectorChoice);
    });
    for (const tab of document.querySelectorAll(".fm-tab")) {
      tab.addEventListener("click", () => { S.inspectorTab = tab.dataset.tab; renderInspectorDetail(); });
    }
  }

  function setInspectorOpen(open) {
    $("inspector").classList.toggle("collapsed", !open);
    $("inspector-toggle").textContent = open ? "▾" : "▸";
  }

  function renderInspectorDetail() {
    const run = S.run;
    const id = S.selection.size === 1 ? S.primary : null;
    for (const tab of document.querySelectorAll(".fm-tab")) {
      tab.classList.toggle("active", tab.dataset.tab === S.inspectorTab);
    }
    $("inspector-sample").hidden = S.inspectorTab !== "sample";
    $("inspector-log").hidden = S.inspectorTab !== "log";
    $("inspector-node").textContent = id ? `node ${nodeLabel(id)}` : "whole run";
    // sample
    const page = $("inspector-sample");
    const st = run && id ? run.nodes[id] : null;
    if (!run) page.replaceChildren(el("p", { class: "muted" }, "Run the flow to see the records each node produced."));
    else if (!id) {
      page.replaceChildren(el("p", { class: "muted" },
        "Select a node on the canvas (or in the list) to see its first output records."));
    }
    else if (!st) page.replaceChildren(el("p", { class: "muted" }, "This node has not run in this run."));
    else {
      const ports = Object.keys(st.sample || {}).filter((p) => (st.sample[p] || []).length);
      const port = ports.includes(S.samplePort) ? S.samplePort : (ports.includes("out") ? "out" : ports[0]);
      const head = el("div", { class: "fm-sample-head" },
        el("span", { class: `state ${st.state}` }, st.state),
        ` in ${sum(st.records_in)} · out ${sum(st.records_out, "error")}`,
        st.seconds !== undefined && st.seconds !== null ? ` · ${Flowmill.fmtSeconds(st.seconds)}` : "",
        ports.length > 1 ? el("span", { class: "fm-ports" }, ports.map((p) => el("button", { type: "button",
          class: p === port ? "active" : "", onclick: () => { S.samplePort = p; renderInspectorDetail(); } },
        `${p} (${st.sample[p].length})`))) : null);
      const parts = [head];
      if (st.error) parts.push(el("div", { class: "fm-run-error error" }, st.error));
      if (port) {
        parts.push(sampleTable(st.sample[port]),
          el("p", { class: "muted small" }, `First ${plural(st.sample[port].length, "record")} of port “${port}”.`));
      }
      else if (st.state !== "running") parts.push(el("p", { class: "muted" }, "No records came out of this node."));
      page.replaceChildren(...parts);
    }
    // log
    const lines = run ? run.log.filter((l) => !id || l.node === id) : [];
    const log = $("inspector-log");
    log.replaceChildren(lines.length
      ? el("pre", { class: "fm-log" }, lines.map((l) => el("div",
        { class: `fm-log-line level-${String(l.level).toLowerCase()}` },
        el("span", { class: "muted" }, l.at ? Flowmill.fmtTime(l.at) + " " : ""),
        !id && l.where ? el("span", { class: "fm-log-where" }, `${l.where} `) : null,
        l.level ? el("span", { class: "fm-log-level" }, `${l.level} `) : null, l.message)))
      : el("p", { class: "muted" }, run ? "No log lines." : "Run the flow to see its log."));
  }

  function cell(value) {
    if (value === null || value === undefined) return el("td", { class: "fm-null" }, value === null ? "null" : "");
    if (typeof value === "object") return el("td", { class: "code" }, JSON.stringify(value));
    if (typeof value === "number") return el("td", { class: "num" }, String(value));
    return el("td", {}, String(value));
  }

  function sampleTable(records) {
    const columns = [];
    for (const record of records) {
      for (const key of Object.keys(record || {})) if (!columns.includes(key) && columns.length < 40) columns.push(key);
    }
    const isNumber = (r, c) => r && typeof r[c] === "number";
    const numeric = new Set(columns.filter((c) => records.every((r) => r == null || r[c] == null || isNumber(r, c))
      && records.some((r) => isNumber(r, c))));
    return el("div", { class: "fm-sample-wrap" }, el("table", { class: "fm-sample" },
      el("thead", {}, el("tr", {}, el("th", { class: "num" }, "#"),
        columns.map((c) => el("th", { class: numeric.has(c) ? "num" : null }, c)))),
      el("tbody", {}, records.map((record, i) => el("tr", {}, el("td", { class: "num muted" }, String(i + 1)),
        columns.map((c) => cell((record || {})[c])))))));
  }

  // -- someone else saved -----------------------------------------------------------------
  function onFlowSaved(ev) {
    if (!S.serverId || ev.flow_id !== S.serverId) { refreshFlowList(); return; }
    if (S.saving) { S.heldSaves.push(ev); return; } // might be our own save: wait for its hash
    if (ev.removed) {
      showSavedNotice(`${ev.by || "Someone"} removed this flow from the server.`, false);
    } else if (ev.flow_hash && ev.flow_hash !== S.hash) {
      const when = ev.at ? ` at ${new Date(ev.at).toLocaleTimeString()}` : "";
      showSavedNotice(`This flow was saved by ${ev.by || "someone"}${when} — reload?`);
    }
  }

  function showSavedNotice(text, reload = true) {
    dismissSavedNotice();
    const notice = el("div", { id: "flow-saved-notice", class: "fm-notice", role: "alert" },
      el("span", { class: "fm-notice-text" }, text),
      reload ? el("button", { type: "button", class: "primary", id: "flow-saved-reload",
        onclick: () => {
          if (!isDirty() || window.confirm("Reload and discard your unsaved changes?")) {
            openFlow(S.serverId, { keepRun: true });
          }
        } },
      "Reload") : null,
      el("button", { type: "button", onclick: dismissSavedNotice,
        title: "Keep editing your version (saving it will be refused)" }, "Dismiss"));
    document.querySelector(".fm-center").prepend(notice);
  }

  function dismissSavedNotice() {
    const old = $("flow-saved-notice");
    if (old) old.remove();
  }
})();
