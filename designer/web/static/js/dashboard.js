/* The dashboard: jobs changing live, job details with node progress and a log tail,
 * schedules, calendars, time conditions and servers.
 *
 * Everything shown comes from /api and from the /live events (Flowmill.live); nothing is
 * polled for what an event tells. After a (re)connect the lists are fetched again, so
 * nothing that happened while offline is missed. What a user may do follows
 * user.permissions (jobs.run, jobs.steer, schedules.write), the same names the API checks.
 */
"use strict";

(() => {
  const { api, el, toast, can } = Flowmill;

  // -- constants ------------------------------------------------------------------------
  const STATES = ["queued", "held", "running", "succeeded", "failed", "cancelled", "expired",
    "aborted", "dead_letter"];
  const FINAL = new Set(["succeeded", "failed", "cancelled", "expired", "aborted", "dead_letter"]);
  const PROBLEM = new Set(["failed", "expired", "aborted", "dead_letter"]);
  const STATE_GROUPS = {
    "@active": { label: "Active (waiting or running)", states: new Set(["queued", "held", "running"]) },
    "@problem": { label: "Did not succeed", states: PROBLEM },
  };
  const CHIP_STATES = ["queued", "held", "running", "succeeded", "failed", "cancelled"];
  const ACTION_LABELS = {
    hold: "Hold", resume: "Resume", edit: "Params…", cancel: "Cancel", kill: "Kill", retry: "Retry",
  };
  const ACTION_TITLES = {
    hold: "Keep this job from starting", resume: "Let this job start again",
    edit: "Change the params before the job starts", cancel: "Cancel this job (it will not run)",
    kill: "Stop the running job", retry: "Queue this job again",
  };
  const JOB_LIMIT = 200;          // jobs fetched per list request
  const KEEP_JOBS = 600;          // jobs kept in memory at most
  const HEARTBEAT_LATE = 5000;    // ms without a heartbeat: warning
  const DAY_KINDS = [["workday", "Workdays (Mon–Fri)"], ["saturday", "Saturdays"],
    ["sunday", "Sundays & holidays"]];
  const TIME_ZONES = ["Europe/Berlin", "Europe/Vienna", "Europe/Zurich", "Europe/London", "UTC",
    "America/New_York", "Asia/Tokyo"];

  // -- state ----------------------------------------------------------------------------
  const S = {
    user: null,
    loaded: false,
    tab: "jobs",
    jobs: new Map(),        // id -> job (as GET /api/jobs gives it)
    runs: new Map(),        // run_id -> {nodes: Map(node_id -> info), finished}
    runJob: new Map(),      // run_id -> job id
    counts: {},             // state -> number of jobs (all of them, from /api/status + events)
    flows: [],              // GET /api/flows
    flowDocs: new Map(),    // flow id -> {hash, flow}
    filter: { state: "", flow: "", text: "" },
    selected: null,         // job id of the detail panel
    detail: null,           // GET /api/jobs/<id> of the selected job
    logLines: [],           // raw lines shown in the log tail
    logKeys: new Set(),
    servers: new Map(),     // id -> server (+ lastBeat ms, running, queued)
    lease: null,
    leaseTimeout: 10000,
    schedules: [],
    calendars: [],
    conditions: [],
    dismissedFailures: 0,
    offlineSince: 0,
  };
  const ui = {};
  const timers = new Map();

  /** Run fn once, `ms` after the last call with this key. */
  function debounce(key, ms, fn) {
    clearTimeout(timers.get(key));
    timers.set(key, setTimeout(() => { timers.delete(key); fn(); }, ms));
  }

  function fail(error, what) {
    if (error && error.status === 401) return;  // common.js sends the browser to /login
    const message = error && error.message ? error.message : String(error);
    toast(what ? `${what}: ${message}` : message, "error");
  }

  // -- formatting -----------------------------------------------------------------------
  const ms = (iso) => (iso ? Date.parse(iso) : NaN);

  function fmtShort(iso) {
    const t = ms(iso);
    if (isNaN(t)) return "";
    const d = new Date(t);
    const now = new Date();
    const time = d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
    if (d.toDateString() === now.toDateString()) return time;
    return d.toLocaleString(undefined, {
      day: "numeric", month: "short", year: d.getFullYear() === now.getFullYear() ? undefined : "numeric",
      hour: "2-digit", minute: "2-digit",
    });
  }

  function fmtLong(iso) {
    const t = ms(iso);
    return isNaN(t) ? (iso || "") : new Date(t).toLocaleString(undefined, {
      year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit",
    });
  }

  /** 850 ms → "0.9 s", 75 s → "1 min 15 s", 2 h … */
  function fmtSpan(millis, precise) {
    if (millis === null || millis === undefined || isNaN(millis)) return "";
    const s = Math.max(0, millis) / 1000;
    if (s < 10 && precise) return `${s.toFixed(1)} s`;
    if (s < 60) return `${Math.floor(s)} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${String(Math.floor(s % 60)).padStart(2, "0")} s`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")} min`;
    return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
  }

  function fmtRelative(iso) {
    const t = ms(iso);
    if (isNaN(t)) return "";
    const delta = t - Date.now();
    if (Math.abs(delta) < 1000) return "now";
    return delta > 0 ? `in ${fmtSpan(delta)}` : `${fmtSpan(-delta)} ago`;
  }

  /** A fire time on the schedule's own wall clock: "Mon 23 Nov, 02:00". */
  function fmtZoned(iso, tz) {
    const t = ms(iso);
    if (isNaN(t)) return iso || "";
    try {
      return new Date(t).toLocaleString(undefined, {
        weekday: "short", day: "numeric", month: "short", hour: "2-digit", minute: "2-digit", timeZone: tz || undefined,
      });
    } catch (e) {
      return fmtLong(iso);
    }
  }

  const fmtCount = (n) => (n === null || n === undefined ? "" : Number(n).toLocaleString());
  const sumPorts = (ports) => Object.values(ports || {}).reduce((a, b) => a + (Number(b) || 0), 0);
  const portsTitle = (ports) => Object.entries(ports || {}).map(([k, v]) => `${k}: ${v}`).join(", ");

  function statePill(state, extra) {
    return el("span", { class: `state ${state || ""} ${extra || ""}`.trim() }, (state || "").replace("_", " "));
  }

  function fmtValue(value) {
    if (value === null || value === undefined) return "—";
    if (typeof value === "object") return JSON.stringify(value);
    return String(value);
  }

  // -- jobs: data -----------------------------------------------------------------------
  function runInfo(runId) {
    let run = S.runs.get(runId);
    if (!run) {
      run = { nodes: new Map(), finished: null };
      S.runs.set(runId, run);
    }
    return run;
  }

  function nodeInfo(run, nodeId) {
    let node = run.nodes.get(nodeId);
    if (!node) {
      node = { node: nodeId, type: "", state: "pending", records: 0, records_in: {}, records_out: {} };
      run.nodes.set(nodeId, node);
    }
    return node;
  }

  /** Stored node runs (GET /api/jobs/<id>) merged under what live events already said. */
  function mergeStoredNodes(job) {
    if (!job || !job.run) return;
    const run = runInfo(job.run.run_id);
    for (const stored of job.run.nodes || []) {
      const node = nodeInfo(run, stored.node);
      if (FINAL.has(node.state) || node.state === "skipped") {
        if (!node.type) node.type = stored.type;
        continue;
      }
      Object.assign(node, {
        type: stored.type, state: stored.state, seconds: stored.seconds,
        records_in: stored.records_in || {}, records_out: stored.records_out || {},
        error: stored.error, attempts: stored.attempts,
      });
      if (stored.state !== "running") node.records = sumPorts(stored.records_out);
    }
    if (job.run.finished_at && !run.finished) {
      run.finished = { state: job.run.state, error: job.run.error, error_node: job.run.error_node };
    }
  }

  /** Keep a job as the API gave it. ``seq``: when it was asked for; a state that an event
   * told after that is kept (the answer is older than the event). */
  function storeJob(job, seq) {
    const old = S.jobs.get(job.id);
    const merged = { ...job };
    delete merged.run;
    delete merged._partial;
    if (old && old._eventSeq && old._eventSeq > (seq || 0)) {
      for (const key of ["state", "run_id", "started_at", "finished_at", "error"]) merged[key] = old[key];
      merged._eventSeq = old._eventSeq;
    }
    S.jobs.set(job.id, merged);
    if (job.run_id) S.runJob.set(job.run_id, job.id);
    if (job.run) mergeStoredNodes(job);
    return merged;
  }

  let eventSeq = 0;
  const staleJobs = new Set();
  let staleTimer = null;

  /** Fetch jobs again after events (coalesced): one by one, or the list after a burst. */
  function refreshJob(id) {
    staleJobs.add(id);
    if (staleTimer === null) staleTimer = setTimeout(refreshStale, 150);
  }

  async function refreshStale() {
    staleTimer = null;
    const ids = [...staleJobs];
    staleJobs.clear();
    const seq = ++eventSeq;
    if (ids.length > 20) {
      await loadJobs(seq).catch(() => {});
      return;
    }
    await Promise.all(ids.map(async (id) => {
      try {
        const job = await api("GET", `/api/jobs/${id}`);
        storeJob(job, seq);
        markDirty(id);
      } catch (e) {
        if (e.status === 404 && id !== S.selected) {
          S.jobs.delete(id);
          markDirty(id);
        }
      }
    }));
  }

  function pruneJobs() {
    if (S.jobs.size <= KEEP_JOBS) return;
    const ids = [...S.jobs.keys()].sort((a, b) => a - b);
    for (const id of ids) {
      if (S.jobs.size <= KEEP_JOBS) break;
      const job = S.jobs.get(id);
      if (id === S.selected || !FINAL.has(job.state)) continue;
      S.jobs.delete(id);
      if (job.run_id) { S.runs.delete(job.run_id); S.runJob.delete(job.run_id); }
      markDirty(id);
    }
  }

  async function loadJobs(seq = ++eventSeq) {
    const q = new URLSearchParams({ limit: String(JOB_LIMIT) });
    if (S.filter.state && !S.filter.state.startsWith("@")) q.set("state", S.filter.state);
    if (S.filter.flow) q.set("flow", S.filter.flow);
    const list = await api("GET", `/api/jobs?${q}`);
    const keep = new Set(list.map((j) => j.id));
    for (const [id, job] of S.jobs) {
      // jobs the new list does not hold and that are not of interest any more
      if (!keep.has(id) && id !== S.selected && FINAL.has(job.state)) S.jobs.delete(id);
    }
    for (const job of list) storeJob(job, seq);
    renderJobs();
  }

  // -- jobs: filters and actions -------------------------------------------------------
  function matches(job) {
    const f = S.filter;
    if (f.state) {
      const group = STATE_GROUPS[f.state];
      if (group ? !group.states.has(job.state) : job.state !== f.state) return false;
    }
    if (f.flow && job.flow !== f.flow) return false;
    if (f.text) {
      const needle = f.text.toLowerCase();
      const hay = [`#${job.id}`, String(job.id), job.flow, job.state, job.source, job.group,
        job.error, job.error_node, job.schedule, JSON.stringify(job.params || {})]
        .filter(Boolean).join(" ").toLowerCase();
      if (!hay.includes(needle)) return false;
    }
    return true;
  }

  /** The actions this user may take on the job in its state (empty for viewers). */
  function actionsFor(job) {
    if (!can("jobs.steer") || job._partial) return [];
    switch (job.state) {
      case "queued": return ["hold", "edit", "cancel"];
      case "held": return ["resume", "edit", "cancel"];
      case "running": return ["kill"];
      case "succeeded": return [];
      default: return FINAL.has(job.state) ? ["retry"] : [];
    }
  }

  function actionButton(job, action, small) {
    const danger = action === "kill" || action === "cancel";
    const disabled = action === "kill" && job.kill_requested;
    return el("button", {
      type: "button",
      class: `act ${small ? "small" : ""} ${danger ? "danger" : ""}`.trim(),
      "data-action": action,
      "data-job-id": job.id,
      title: disabled ? "kill requested: the job stops at its next check" : ACTION_TITLES[action],
      disabled,
      onclick: (event) => { event.stopPropagation(); runAction(job.id, action); },
    }, disabled ? "Killing…" : ACTION_LABELS[action]);
  }

  async function runAction(id, action) {
    const job = S.jobs.get(id);
    if (!job) return;
    if (action === "edit") return editParams(job);
    if (action === "cancel" || action === "kill") {
      const running = job.state === "running";
      const ok = await confirmDialog({
        title: running ? `Kill job #${id}?` : `Cancel job #${id}?`,
        message: running
          ? `The run of ${job.flow} is stopped at its next check; a writer rolls back what it has not committed. The job ends as cancelled.`
          : `Job #${id} (${job.flow}) will not run. You can queue it again later with Retry.`,
        ok: running ? "Kill job" : "Cancel job",
        cancel: "Keep it",
        danger: true,
      });
      if (!ok) return;
    }
    try {
      const changed = await api("POST", `/api/jobs/${id}/${action}`);
      storeJob(changed);
      markDirty(id);
      if (S.selected === id) refreshDetail();
      const verbs = { hold: "held", resume: "resumed", cancel: "cancelled", kill: "kill requested", retry: "queued again" };
      toast(`Job #${id} ${verbs[action]}`, "ok", { ms: 3500 });
    } catch (e) {
      fail(e, `${ACTION_LABELS[action]} job #${id}`);
      refreshJob(id);
    }
  }

  // -- jobs: rendering ------------------------------------------------------------------
  const dirty = new Set();
  let flushPending = false;

  function markDirty(id) {
    dirty.add(id);
    if (!flushPending) {
      flushPending = true;
      requestAnimationFrame(flush);
    }
  }

  function flush() {
    flushPending = false;
    const ids = [...dirty];
    dirty.clear();
    for (const id of ids) updateRow(id);
    if (ids.length) {
      updateEmptyRow();
      renderChips();
      if (S.tab === "servers") {
        renderRunning();
        renderCards();
      }
      if (S.selected !== null && ids.includes(S.selected)) renderDetailParts();
    }
  }

  function progressCell(job) {
    const cell = el("td", { class: "job-progress" });
    const run = job.run_id ? S.runs.get(job.run_id) : null;
    if (job.state === "running") {
      const nodes = run ? [...run.nodes.values()] : [];
      const active = nodes.filter((n) => n.state === "running" || n.state === "retrying");
      const done = nodes.filter((n) => FINAL.has(n.state) || n.state === "skipped").length;
      if (active.length) {
        for (const n of active) {
          cell.append(el("span", { class: "node-now", title: n.type },
            el("span", { class: "spinner", "aria-hidden": "true" }),
            el("span", { class: "node-name" }, n.node),
            n.records ? el("span", { class: "records" }, `${fmtCount(n.records)} rec`) : null,
            n.state === "retrying" ? el("span", { class: "retrying" }, `retry ${n.attempt || ""}`) : null,
            n.status ? el("span", { class: "muted status-text" }, n.status) : null));
        }
      } else {
        cell.append(el("span", { class: "muted" }, job.kill_requested ? "stopping…" : "starting…"));
      }
      if (done) cell.append(el("span", { class: "muted nodes-done" }, `${done} node${done === 1 ? "" : "s"} done`));
      if (job.kill_requested) cell.append(el("span", { class: "warn-text" }, "kill requested"));
    } else if (job.state === "queued") {
      const due = ms(job.not_before);
      if (due > Date.now() + 1000) cell.append(el("span", { class: "muted" }, `not before ${fmtShort(job.not_before)}`));
      else cell.append(el("span", { class: "muted" }, job.group ? `waiting (group ${job.group})` : "waiting for a slot"));
    } else if (job.state === "held") {
      cell.append(el("span", { class: "muted" }, "held until resumed"));
    } else if (job.error && PROBLEM.has(job.state)) {
      cell.append(el("span", { class: "error-text", title: job.error },
        job.error_node ? el("b", {}, `${job.error_node}: `) : null, job.error));
    } else if (FINAL.has(job.state) && job.finished_at) {
      const why = job.state === "cancelled" && job.error && job.error !== "cancelled" ? ` · ${job.error}` : "";
      cell.append(el("span", { class: "muted", title: fmtLong(job.finished_at) }, `${job.state === "cancelled" ? "cancelled" : "finished"} ${fmtShort(job.finished_at)}${why}`));
    }
    return cell;
  }

  function durationCell(job, tag = "td") {
    const cell = el(tag, { class: `${tag === "td" ? "num " : ""}job-duration` });
    if (job.started_at) {
      cell.dataset.from = String(ms(job.started_at));
      if (job.finished_at && job.state !== "running") cell.dataset.to = String(ms(job.finished_at));
      cell.textContent = fmtSpan((job.finished_at && job.state !== "running" ? ms(job.finished_at) : Date.now()) - ms(job.started_at), true);
      if (job.state === "running") cell.classList.add("ticking");
    }
    return cell;
  }

  function jobRow(job) {
    const flow = S.flows.find((f) => f.id === job.flow);
    const actions = actionsFor(job);
    const tr = el("tr", {
      "data-job-id": job.id,
      "data-state": job.state,
      class: `job-row ${S.selected === job.id ? "selected" : ""}`,
      tabindex: "0",
      onclick: () => selectJob(job.id),
      onkeydown: (event) => { if (event.key === "Enter") selectJob(job.id); },
    },
    el("td", { class: "num job-id" }, `#${job.id}`),
    el("td", { class: "job-flow", title: flow ? flow.name : job.flow }, job.flow,
      job.group ? el("span", { class: "tag", title: "group" }, job.group) : null,
      job.schedule ? el("span", { class: "tag sched", title: `schedule ${job.schedule}` }, "⏱") : null),
    el("td", {}, statePill(job.state, "job-state")),
    progressCell(job),
    el("td", { class: "num muted prio" }, job.priority ? String(job.priority) : "0"),
    el("td", { class: "nowrap", title: fmtLong(job.submitted_at) }, fmtShort(job.submitted_at)),
    durationCell(job),
    el("td", { class: "muted source", title: job.source || "" }, job.source || ""),
    el("td", { class: "job-actions" }, actions.map((a) => actionButton(job, a, true))));
    return tr;
  }

  function rowOf(id) {
    return ui.jobsBody.querySelector(`tr[data-job-id="${id}"]`);
  }

  function updateRow(id) {
    const job = S.jobs.get(id);
    const existing = rowOf(id);
    if (!job || !matches(job)) {
      if (existing) existing.remove();
      return;
    }
    const row = jobRow(job);
    if (existing) {
      patchRow(existing, row);
      return;
    }
    // newest first: before the first row with a smaller id
    for (const other of ui.jobsBody.querySelectorAll("tr[data-job-id]")) {
      if (Number(other.dataset.jobId) < id) {
        other.before(row);
        return;
      }
    }
    ui.jobsBody.append(row);
  }

  /** Bring a row up to date replacing only the cells that changed, so a button under the
   * pointer survives the many progress updates of a running job. */
  function patchRow(row, fresh) {
    row.className = fresh.className;
    row.dataset.state = fresh.dataset.state;
    const cells = [...fresh.children];
    [...row.children].forEach((cell, i) => {
      if (cells[i] && cell.outerHTML !== cells[i].outerHTML) cell.replaceWith(cells[i]);
    });
  }

  /** Replace a container's children only when they would look different. */
  function setContent(container, ...children) {
    const probe = document.createElement(container.tagName);
    probe.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
    if (probe.innerHTML !== container.innerHTML) container.replaceChildren(...probe.childNodes);
  }

  function updateEmptyRow() {
    const empty = ui.jobsBody.querySelector("tr.empty");
    const any = ui.jobsBody.querySelector("tr[data-job-id]");
    if (any && empty) empty.remove();
    if (!any && !empty) {
      const filtered = S.filter.state || S.filter.flow || S.filter.text;
      ui.jobsBody.append(el("tr", { class: "empty" }, el("td", { colspan: "9" },
        filtered ? "No jobs match the filters." : "No jobs yet.",
        !filtered && can("jobs.run") ? " Start one with “Run flow”." : "")));
    }
  }

  function renderJobs() {
    const rows = [...S.jobs.values()].filter(matches).sort((a, b) => b.id - a.id).slice(0, KEEP_JOBS);
    ui.jobsBody.replaceChildren(...rows.map(jobRow));
    updateEmptyRow();
    renderChips();
    renderRunning();
  }

  function renderChips() {
    const chips = CHIP_STATES.map((state) => {
      const n = S.counts[state] || 0;
      const active = S.filter.state === state;
      return el("button", {
        type: "button",
        class: `chip ${state} ${active ? "active" : ""} ${n ? "" : "zero"}`.trim(),
        "data-state": state,
        title: active ? "show all states" : `show only ${state} jobs`,
        onclick: () => setFilter({ state: active ? "" : state }),
      }, el("span", { class: "chip-n" }, fmtCount(n)), state);
    });
    ui.chips.replaceChildren(...chips);
    const running = S.counts.running || 0;
    ui.jobsCount.textContent = running ? String(running) : "";
    ui.jobsCount.title = running ? `${running} running` : "";
  }

  function setFilter(change) {
    const before = { ...S.filter };
    Object.assign(S.filter, change);
    ui.filterState.value = S.filter.state;
    ui.filterFlow.value = S.filter.flow;
    if (change.text === undefined) ui.filterText.value = S.filter.text;
    renderJobs();
    // state and flow are also asked from the server: older matching jobs come in too
    if (before.state !== S.filter.state || before.flow !== S.filter.flow) {
      loadJobs().catch((e) => fail(e, "Loading jobs"));
    }
  }

  function fillFilterOptions() {
    if (!ui.filterState.options.length) {
      const opts = [el("option", { value: "" }, "All states")];
      for (const [key, group] of Object.entries(STATE_GROUPS)) opts.push(el("option", { value: key }, group.label));
      for (const state of STATES) opts.push(el("option", { value: state }, state.replace("_", " ")));
      ui.filterState.replaceChildren(...opts);
    }
    const ids = new Set(S.flows.map((f) => f.id));
    for (const job of S.jobs.values()) ids.add(job.flow);
    const current = S.filter.flow;
    ui.filterFlow.replaceChildren(el("option", { value: "" }, "All flows"),
      ...[...ids].sort().map((id) => el("option", { value: id, selected: id === current }, id)));
    ui.filterFlow.value = current;
    ui.filterState.value = S.filter.state;
  }

  // -- job detail -------------------------------------------------------------------------
  function selectJob(id) {
    if (S.selected === id) return;
    const previous = S.selected;
    S.selected = id;
    S.detail = null;
    S.logLines = [];
    S.logKeys = new Set();
    if (previous !== null) markDirty(previous);
    markDirty(id);
    buildDetail();
    refreshDetail(true);
  }

  function closeDetail() {
    const previous = S.selected;
    S.selected = null;
    S.detail = null;
    ui.detail.hidden = true;
    ui.split.classList.remove("with-detail");
    ui.detail.replaceChildren();
    if (previous !== null) markDirty(previous);
  }

  function buildDetail() {
    ui.detail.hidden = false;
    ui.split.classList.add("with-detail");
    ui.dHead = el("header", { class: "detail-head" });
    ui.dActions = el("div", { class: "detail-actions" });
    ui.dError = el("div", { class: "detail-error", hidden: true });
    ui.dNodes = el("section", { class: "detail-section" });
    ui.dParams = el("section", { class: "detail-section" });
    ui.dFields = el("section", { class: "detail-section" });
    ui.log = el("div", { id: "job-log", class: "log", tabindex: "0", role: "log", "aria-live": "off" });
    ui.logFollow = el("label", { class: "follow" },
      el("input", { type: "checkbox", checked: true, id: "log-follow" }), " follow");
    ui.detail.replaceChildren(ui.dHead, ui.dActions,
      el("div", { class: "detail-body" }, ui.dError, ui.dNodes, ui.dParams, ui.dFields),
      el("section", { class: "detail-section log-section" },
        el("h3", {}, "Log", el("span", { class: "spacer" }), ui.logFollow), ui.log));
    ui.log.addEventListener("scroll", () => {
      const atEnd = ui.log.scrollTop + ui.log.clientHeight >= ui.log.scrollHeight - 8;
      ui.logFollow.querySelector("input").checked = atEnd;
    });
    renderDetailParts();
  }

  /** Fetch the selected job (with its run) and its log again. */
  function refreshDetail(first) {
    const id = S.selected;
    if (id === null) return;
    debounce("detail", first ? 0 : 150, async () => {
      const seq = ++eventSeq;
      try {
        const [job, log] = await Promise.all([
          api("GET", `/api/jobs/${id}`),
          api("GET", `/api/jobs/${id}/log`),
        ]);
        if (S.selected !== id) return;
        S.detail = job;
        storeJob(job, seq);
        setLog(log.lines || []);
        ensureFlowDoc(job.flow, job.flow_hash);
        markDirty(id);
        renderDetailParts();
      } catch (e) {
        if (S.selected !== id) return;
        if (e.status === 404) {
          toast(`Job #${id} no longer exists`, "error");
          closeDetail();
        } else {
          fail(e, `Loading job #${id}`);
        }
      }
    });
  }

  function renderDetailParts() {
    const id = S.selected;
    if (id === null || !ui.dHead) return;
    const job = S.jobs.get(id) || (S.detail && S.detail.id === id ? S.detail : null);
    if (!job) {
      ui.dHead.replaceChildren(el("h2", {}, `Job #${id}`), el("span", { class: "muted" }, "loading…"));
      return;
    }
    const flow = S.flows.find((f) => f.id === job.flow);
    setContent(ui.dHead,
      el("div", { class: "detail-title" },
        el("h2", {}, `Job #${job.id}`), statePill(job.state, "job-state"),
        el("span", { class: "spacer" }),
        el("button", { type: "button", class: "close", title: "Close (Esc)", "aria-label": "close", onclick: closeDetail }, "×")),
      el("div", { class: "detail-sub" },
        el("a", { href: `/editor/${encodeURIComponent(job.flow)}`, title: "open in the editor" }, flow ? flow.name : job.flow),
        flow && flow.name !== job.flow ? el("span", { class: "muted" }, ` (${job.flow})`) : null,
        flow && flow.hash !== job.flow_hash
          ? el("span", { class: "tag warn", title: "the flow was changed since: this job runs the version it was submitted with" }, "older version")
          : null));
    setContent(ui.dActions, actionsFor(job).map((a) => actionButton(job, a, false)));
    ui.dActions.hidden = !ui.dActions.childElementCount;
    renderDetailError(job);
    renderDetailNodes(job);
    renderDetailParams(job);
    renderDetailFields(job);
  }

  function renderDetailError(job) {
    const run = job.run_id ? S.runs.get(job.run_id) : null;
    const error = job.error || (run && run.finished && run.finished.error);
    const node = job.error_node || (run && run.finished && run.finished.error_node);
    if (!error || job.state === "succeeded" || job.state === "running" || job.state === "queued") {
      ui.dError.hidden = true;
      return;
    }
    ui.dError.hidden = false;
    setContent(ui.dError,
      el("div", { class: "detail-error-title" }, node ? `Failed in node ${node}` : `Job ${job.state}`),
      el("pre", {}, error));
  }

  /** A flow's node ids in run order (sources first; ties by id). */
  function flowOrder(flow) {
    const ids = (flow.nodes || []).map((n) => n.id).sort();
    const incoming = new Map(ids.map((id) => [id, 0]));
    const next = new Map(ids.map((id) => [id, []]));
    for (const e of flow.edges || []) {
      if (!incoming.has(e.target) || !next.has(e.source)) continue;
      incoming.set(e.target, incoming.get(e.target) + 1);
      next.get(e.source).push(e.target);
    }
    const order = [];
    const ready = ids.filter((id) => incoming.get(id) === 0);
    while (ready.length) {
      const id = ready.shift();
      order.push(id);
      for (const t of next.get(id)) {
        incoming.set(t, incoming.get(t) - 1);
        if (incoming.get(t) === 0) ready.push(t);
      }
    }
    for (const id of ids) if (!order.includes(id)) order.push(id);  // a cycle: never valid anyway
    return order;
  }

  function renderDetailNodes(job) {
    const run = job.run_id ? S.runs.get(job.run_id) : null;
    const rows = [];
    const seen = new Set();
    const ordered = run ? [...run.nodes.values()] : [];
    const doc = S.flowDocs.get(job.flow);
    if (doc && doc.hash === job.flow_hash) {
      // nodes that have not started yet, in flow order
      const types = new Map((doc.flow.nodes || []).map((n) => [n.id, n.type]));
      for (const id of flowOrder(doc.flow)) {
        if (!run || !run.nodes.has(id)) ordered.push({ node: id, type: types.get(id), state: FINAL.has(job.state) ? "not run" : "pending" });
      }
    }
    for (const n of ordered) {
      if (seen.has(n.node)) continue;
      seen.add(n.node);
      const running = n.state === "running" || n.state === "retrying";
      const recIn = sumPorts(n.records_in);
      const recOut = running ? n.records : sumPorts(n.records_out);
      rows.push(el("tr", { "data-node-id": n.node, class: `node-row ${n.state}` },
        el("td", {}, el("div", { class: "node-name" }, n.node), el("div", { class: "muted small" }, n.type || "")),
        el("td", {}, statePill(n.state === "not run" ? "skipped" : n.state, "node-state"),
          n.state === "not run" ? el("span", { class: "muted small" }, " not run") : null),
        el("td", { class: "num", title: portsTitle(n.records_in) }, recIn ? fmtCount(recIn) : ""),
        el("td", { class: "num node-records", title: running ? "records so far" : portsTitle(n.records_out) },
          recOut ? fmtCount(recOut) : (running ? "0" : "")),
        el("td", { class: "num" }, n.seconds !== undefined && n.seconds !== null && !running ? Flowmill.fmtSeconds(n.seconds) : (running ? "…" : ""))));
      if (n.error) {
        rows.push(el("tr", { class: "node-error-row" }, el("td", { colspan: "5", class: "error-text" }, n.error)));
      } else if (running && n.status) {
        rows.push(el("tr", { class: "node-status-row" }, el("td", { colspan: "5", class: "muted" }, n.status)));
      }
    }
    setContent(ui.dNodes, el("h3", {}, "Nodes"),
      rows.length
        ? el("table", { class: "grid compact nodes", id: "job-nodes" },
          el("thead", {}, el("tr", {}, el("th", {}, "Node"), el("th", {}, "State"), el("th", { class: "num" }, "In"),
            el("th", { class: "num" }, "Out"), el("th", { class: "num" }, "Time"))),
          el("tbody", {}, rows))
        : el("p", { class: "muted small" }, job.state === "queued" || job.state === "held" ? "Not started yet." : "No node runs recorded."));
  }

  function renderDetailParams(job) {
    const entries = Object.entries(job.params || {});
    const editable = can("jobs.steer") && (job.state === "queued" || job.state === "held");
    setContent(ui.dParams,
      el("h3", {}, "Params", el("span", { class: "spacer" }),
        editable ? el("button", { type: "button", class: "small", id: "detail-edit-params", onclick: () => editParams(S.jobs.get(job.id) || job) }, "Edit") : null),
      entries.length
        ? el("table", { class: "kv", id: "job-params" }, el("tbody", {}, entries.map(([k, v]) =>
          el("tr", { "data-param": k }, el("th", {}, k), el("td", { class: "mono" }, fmtValue(v))))))
        : el("p", { class: "muted small" }, "No params given: the flow's defaults apply."));
  }

  function renderDetailFields(job) {
    const fields = [
      ["Version", el("span", { class: "mono", title: job.flow_hash }, (job.flow_hash || "").slice(0, 12))],
      ["Priority", String(job.priority ?? 0)],
      ["Submitted", fmtLong(job.submitted_at)],
      ["Not before", job.not_before && job.not_before !== job.submitted_at ? fmtLong(job.not_before) : null],
      ["Expires", job.expires_at ? fmtLong(job.expires_at) : null],
      ["Started", job.started_at ? fmtLong(job.started_at) : null],
      ["Finished", job.finished_at ? fmtLong(job.finished_at) : null],
      ["Duration", job.started_at ? durationCell(job, "span") : null],
      ["Attempts", `${job.attempts ?? 0} of ${job.max_attempts ?? 1}`],
      ["Group", job.group ? `${job.group} (#${job.group_pos ?? "?"})` : null],
      ["Pool", job.pool],
      ["Time condition", job.time_condition],
      ["Schedule", job.schedule],
      ["Source", job.source],
      ["Worker", job.worker],
      ["Run", job.run_id ? el("span", { class: "mono" }, job.run_id) : null],
    ].filter(([, v]) => v !== null && v !== undefined && v !== "");
    setContent(ui.dFields, el("h3", {}, "Details"),
      el("dl", { class: "fields" }, fields.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])));
  }

  // -- the log tail -------------------------------------------------------------------------
  const LOG_LINE = /^(\d{4}-\d\d-\d\dT\S+) (job|run|node ([^:]+)): (?:(DEBUG|INFO|WARNING|ERROR|CRITICAL) )?([\s\S]*)$/;

  function logEntry(line) {
    const m = LOG_LINE.exec(line);
    if (!m) return { t: NaN, line, where: "", level: "", message: line };
    return { t: ms(m[1]), ts: m[1], line, where: m[2], level: m[4] || "", message: m[5] };
  }

  function logElement(entry) {
    const level = (entry.level || "").toLowerCase();
    return el("div", { class: `log-line ${level} ${entry.where === "job" ? "job" : ""}`.trim() },
      el("span", { class: "log-ts", title: entry.ts || "" }, isNaN(entry.t) ? "" : new Date(entry.t).toLocaleTimeString(undefined, { hour12: false }) + `.${String(entry.t % 1000).padStart(3, "0")}`),
      el("span", { class: "log-where" }, entry.where),
      entry.level ? el("span", { class: `log-level ${level}` }, entry.level) : null,
      el("span", { class: "log-msg" }, entry.message));
  }

  function following() {
    const box = ui.logFollow && ui.logFollow.querySelector("input");
    return !box || box.checked;
  }

  function scrollLog() {
    if (following()) ui.log.scrollTop = ui.log.scrollHeight;
  }

  /** The whole log as the server has it, plus live lines it did not have yet. */
  function setLog(lines) {
    if (!ui.log) return;
    const live = S.logLines.filter((line) => !lines.includes(line));
    const all = [...lines, ...live];
    const entries = all.map(logEntry);
    // the job's own lines and the run's lines come as two blocks: show them in time order
    entries.sort((a, b) => (isNaN(a.t) || isNaN(b.t) ? 0 : a.t - b.t));
    S.logLines = entries.map((e) => e.line);
    S.logKeys = new Set(S.logLines);
    ui.log.replaceChildren(...(entries.length ? entries.map(logElement) : [el("div", { class: "muted log-empty" }, "No log lines yet.")]));
    scrollLog();
  }

  function appendLog(line) {
    if (!ui.log || S.logKeys.has(line)) return;
    S.logKeys.add(line);
    S.logLines.push(line);
    const empty = ui.log.querySelector(".log-empty");
    if (empty) empty.remove();
    ui.log.append(logElement(logEntry(line)));
    if (ui.log.childElementCount > 5000) ui.log.firstElementChild.remove();
    scrollLog();
  }

  // -- dialogs ------------------------------------------------------------------------------
  let dialogDone = null;

  /** Show the page's <dialog> with a form; resolves with what onSubmit returned, or null. */
  function openDialog({ title, body, submit, cancel = "Cancel", danger = false, onSubmit, wide = false }) {
    const dialog = ui.dialog;
    if (dialog.open) closeDialogWith(null);
    const error = el("p", { class: "dialog-error error", role: "alert", hidden: true });
    const okButton = el("button", { type: "submit", class: danger ? "danger-solid" : "primary", id: "dialog-ok" }, submit);
    const form = el("form", { method: "dialog", class: "dialog-form", novalidate: true },
      el("header", {}, el("h2", { id: "dialog-title" }, title)),
      el("div", { class: "dialog-body" }, body),
      error,
      el("footer", {},
        el("button", { type: "button", id: "dialog-cancel", onclick: () => closeDialogWith(null) }, cancel),
        okButton));
    dialog.classList.toggle("wide", wide);
    dialog.replaceChildren(form);
    return new Promise((resolve) => {
      dialogDone = resolve;
      form.addEventListener("submit", async (event) => {
        event.preventDefault();
        error.hidden = true;
        for (const bad of form.querySelectorAll(".invalid")) bad.classList.remove("invalid");
        okButton.disabled = true;
        try {
          const result = onSubmit ? await onSubmit(form) : true;
          closeDialogWith(result === undefined ? true : result);
        } catch (e) {
          if (e.status === 401) return;
          error.hidden = false;
          error.textContent = e.message;
          for (const d of e.details || []) {
            const name = d.field || d.node;
            const input = name && form.querySelector(`[name="${CSS.escape(String(name).split(".")[0])}"]`);
            if (input) input.classList.add("invalid");
          }
        } finally {
          okButton.disabled = false;
        }
      });
      dialog.showModal();
      const first = form.querySelector(".dialog-body input:not([type=hidden]):not([readonly]), .dialog-body select, .dialog-body textarea");
      (first || okButton).focus();
    });
  }

  function closeDialogWith(result) {
    const done = dialogDone;
    dialogDone = null;
    if (ui.dialog.open) ui.dialog.close();
    if (done) done(result);
  }

  function confirmDialog({ title, message, ok, cancel, danger }) {
    return openDialog({ title, body: el("p", {}, message), submit: ok, cancel, danger }).then((r) => !!r);
  }

  function field(label, input, hint) {
    return el("label", { class: "form-field" }, el("span", { class: "label" }, label), input,
      hint ? el("span", { class: "hint" }, hint) : null);
  }

  /** Inputs for a flow's declared params; values() gives the typed values. */
  function paramsForm(decls, values, { onlyChanged = false } = {}) {
    const rows = [];
    const readers = [];
    const names = Object.keys(decls || {});
    for (const name of Object.keys(values || {})) if (!names.includes(name)) names.push(name);
    for (const name of names) {
      const decl = (decls || {})[name] || { type: "string" };
      const given = values && Object.prototype.hasOwnProperty.call(values, name);
      const value = given ? values[name] : undefined;
      const placeholder = decl.default !== undefined && decl.default !== null ? `default: ${fmtValue(decl.default)}` : (decl.required ? "required" : "");
      let input;
      let read;
      if (decl.enum) {
        input = el("select", { name: `param:${name}`, "data-param": name },
          el("option", { value: "" }, placeholder ? `(${placeholder})` : "(none)"),
          decl.enum.map((option) => el("option", { value: JSON.stringify(option), selected: given && value === option }, fmtValue(option))));
        read = () => (input.value === "" ? undefined : JSON.parse(input.value));
      } else if (decl.type === "boolean") {
        input = el("select", { name: `param:${name}`, "data-param": name },
          el("option", { value: "" }, placeholder ? `(${placeholder})` : "(not set)"),
          el("option", { value: "true", selected: given && value === true }, "true"),
          el("option", { value: "false", selected: given && value === false }, "false"));
        read = () => (input.value === "" ? undefined : input.value === "true");
      } else {
        const type = decl.type === "integer" || decl.type === "number" ? "number" : decl.type === "date" ? "date" : "text";
        input = el("input", {
          name: `param:${name}`, "data-param": name, type,
          step: decl.type === "number" ? "any" : decl.type === "integer" ? "1" : null,
          value: given && value !== null ? (typeof value === "object" ? JSON.stringify(value) : String(value)) : null,
          placeholder,
          class: type === "text" ? "" : "short",
        });
        read = () => {
          if (input.value === "") return given && decl.type === "string" ? "" : undefined;
          if (decl.type === "integer") return parseInt(input.value, 10);
          if (decl.type === "number") return Number(input.value);
          return input.value;
        };
      }
      readers.push([name, read, given, value]);
      rows.push(field(decl.title ? `${decl.title} (${name})` : name, input,
        [decl.type, decl.description].filter(Boolean).join(" — ")));
    }
    const box = el("fieldset", { class: "params-form" }, el("legend", {}, "Params"),
      rows.length ? rows : el("p", { class: "muted small" }, "This flow declares no params."));
    box.values = () => {
      const out = {};
      for (const [name, read, given, old] of readers) {
        const v = read();
        if (v === undefined) continue;
        if (onlyChanged && given && JSON.stringify(v) === JSON.stringify(old)) continue;
        out[name] = v;
      }
      return out;
    };
    return box;
  }

  async function flowDoc(flowId) {
    const cached = S.flowDocs.get(flowId);
    if (cached) return cached;
    const data = await api("GET", `/api/flows/${encodeURIComponent(flowId)}`);
    const doc = { hash: data.hash, flow: data.flow };
    S.flowDocs.set(flowId, doc);
    return doc;
  }

  function ensureFlowDoc(flowId, hash) {
    const cached = S.flowDocs.get(flowId);
    if (cached && cached.hash === hash) return;
    if (cached) S.flowDocs.delete(flowId);
    flowDoc(flowId).then(() => { if (S.selected !== null) renderDetailParts(); }).catch(() => {});
  }

  async function editParams(job) {
    let decls = {};
    let note = null;
    try {
      const doc = await flowDoc(job.flow);
      decls = doc.flow.params || {};
      if (doc.hash !== job.flow_hash) note = el("p", { class: "hint" }, "The flow was changed since this job was submitted; the job keeps the version it was submitted with and its params are checked against that.");
    } catch (e) {
      note = el("p", { class: "hint" }, "The flow is not on the server any more: only the params the job has can be changed.");
    }
    const form = paramsForm(decls, job.params || {}, { onlyChanged: true });
    const saved = await openDialog({
      title: `Params of job #${job.id}`,
      body: [el("p", { class: "muted" }, `${job.flow} · ${job.state}. Only changed values are sent; empty fields keep the flow's default.`), note, form],
      submit: "Save params",
      onSubmit: async () => {
        const params = form.values();
        if (!Object.keys(params).length) return "unchanged";
        return api("PATCH", `/api/jobs/${job.id}`, { params });
      },
    });
    if (saved && typeof saved === "object") {
      storeJob(saved);
      markDirty(job.id);
      if (S.selected === job.id) refreshDetail();
      toast(`Params of job #${job.id} saved`, "ok", { ms: 3500 });
    }
  }

  // -- run a flow -----------------------------------------------------------------------------
  async function runFlowDialog(preset) {
    try {
      S.flows = await api("GET", "/api/flows");
    } catch (e) {
      fail(e, "Loading flows");
      return;
    }
    if (!S.flows.length) {
      toast("There are no flows on the server yet: create one in the editor first.", "error");
      return;
    }
    const enabled = S.flows.filter((f) => f.enabled);
    const choose = el("select", { name: "flow", id: "run-flow-select" },
      S.flows.map((f) => el("option", { value: f.id, disabled: !f.enabled, selected: preset ? f.id === preset : f === enabled[0] },
        `${f.name || f.id}${f.name && f.name !== f.id ? ` (${f.id})` : ""}${f.enabled ? "" : " — disabled"}`)));
    const paramsBox = el("div", { class: "params-slot" });
    let form = null;
    const showParams = async () => {
      paramsBox.replaceChildren(el("p", { class: "muted small" }, "Loading params…"));
      try {
        const doc = await flowDoc(choose.value);
        form = paramsForm(doc.flow.params || {}, {});
        paramsBox.replaceChildren(form);
      } catch (e) {
        paramsBox.replaceChildren(el("p", { class: "error" }, e.message));
      }
    };
    choose.addEventListener("change", showParams);
    const priority = el("input", { name: "priority", type: "number", min: "-1000", max: "1000", step: "1", value: "0", class: "short" });
    const notBefore = el("input", { name: "not_before", type: "datetime-local", step: "1" });
    const maxDelay = el("input", { name: "max_delay", placeholder: "e.g. 2h", class: "short" });
    const group = el("input", { name: "group", placeholder: "none" });
    showParams();
    const job = await openDialog({
      title: "Run flow",
      wide: true,
      body: [
        field("Flow", choose),
        paramsBox,
        el("div", { class: "form-row" },
          field("Priority", priority, "higher starts first"),
          field("Not before", notBefore, "empty: now (your local time)"),
          field("Max delay", maxDelay, "expire if not started in time")),
        field("Group", group, "jobs of a group run one after another; a failure aborts the rest"),
      ],
      submit: "Run",
      onSubmit: async () => {
        const body = { params: form ? form.values() : {}, priority: parseInt(priority.value || "0", 10) };
        if (notBefore.value) body.not_before = new Date(notBefore.value).toISOString();
        if (maxDelay.value.trim()) body.max_delay = maxDelay.value.trim();
        if (group.value.trim()) body.group = group.value.trim();
        return api("POST", `/api/flows/${encodeURIComponent(choose.value)}/run`, body);
      },
    });
    if (job && typeof job === "object") {
      storeJob(job);
      markDirty(job.id);
      toast(`Job #${job.id} queued for ${job.flow}`, "ok", { ms: 3500 });
      showTab("jobs");
      selectJob(job.id);
    }
  }

  // -- live events ----------------------------------------------------------------------------
  function onEvent(ev) {
    switch (ev.event) {
      case "Connected":
        if (S.loaded) reloadAll();
        break;
      case "JobChanged":
        onJobChanged(ev);
        break;
      case "RunStarted":
        runInfo(ev.run_id);
        break;
      case "NodeStarted": {
        const node = nodeInfo(runInfo(ev.run_id), ev.node_id);
        Object.assign(node, { type: ev.node_type, state: "running", attempt: ev.attempt, records: 0, error: null, status: "", startedAt: ms(ev.at) });
        touchRun(ev.run_id);
        break;
      }
      case "NodeProgress": {
        const node = nodeInfo(runInfo(ev.run_id), ev.node_id);
        node.records = ev.records;
        if (node.state === "pending") node.state = "running";
        touchRun(ev.run_id);
        break;
      }
      case "NodeStatus": {
        nodeInfo(runInfo(ev.run_id), ev.node_id).status = ev.text;
        touchRun(ev.run_id);
        break;
      }
      case "NodeRetrying": {
        const node = nodeInfo(runInfo(ev.run_id), ev.node_id);
        Object.assign(node, { state: "retrying", attempt: ev.attempt, status: `retrying in ${fmtSpan(ev.delay * 1000, true)}: ${ev.error}` });
        touchRun(ev.run_id);
        break;
      }
      case "NodeFinished": {
        const node = nodeInfo(runInfo(ev.run_id), ev.node_id);
        Object.assign(node, {
          type: ev.node_type, state: ev.state, seconds: ev.seconds, records_in: ev.records_in || {},
          records_out: ev.records_out || {}, error: ev.error, attempts: ev.attempts, status: "",
          records: sumPorts(ev.records_out),
        });
        touchRun(ev.run_id);
        break;
      }
      case "NodeSkipped": {
        const node = nodeInfo(runInfo(ev.run_id), ev.node_id);
        Object.assign(node, { type: ev.node_type, state: "skipped", status: ev.reason, records_in: ev.records_in || {}, records_out: ev.records_out || {} });
        touchRun(ev.run_id);
        break;
      }
      case "RunFinished":
        runInfo(ev.run_id).finished = { state: ev.state, error: ev.error, error_node: ev.error_node };
        touchRun(ev.run_id);
        break;
      case "LogEmitted":
        if (S.selected !== null && S.runJob.get(ev.run_id) === S.selected) {
          appendLog(`${ev.at} ${ev.node_id ? `node ${ev.node_id}` : "run"}: ${ev.level} ${ev.message}`);
        }
        break;
      case "FlowSaved":
        S.flowDocs.delete(ev.flow_id);
        debounce("flows", 300, () => loadFlows().catch(() => {}));
        if (S.tab === "schedules") debounce("schedules", 500, () => loadSchedules().catch(() => {}));
        break;
      case "ServerHeartbeat":
        onHeartbeat(ev);
        break;
      default:
        break;
    }
  }

  function touchRun(runId) {
    const id = S.runJob.get(runId);
    if (id !== undefined) markDirty(id);
  }

  function onJobChanged(ev) {
    const id = ev.job_id;
    if (ev.previous !== ev.state) {
      if (ev.previous) S.counts[ev.previous] = Math.max(0, (S.counts[ev.previous] || 0) - 1);
      S.counts[ev.state] = (S.counts[ev.state] || 0) + 1;
    }
    let job = S.jobs.get(id);
    if (!job) {
      // a job we have not seen: show it at once, the rest of it follows
      job = { id, flow: ev.flow_id, state: ev.state, run_id: ev.run_id || null, params: {}, submitted_at: ev.at,
        error: ev.error, source: "", priority: 0, _partial: true };
      S.jobs.set(id, job);
      if (!S.flows.some((f) => f.id === ev.flow_id)) debounce("flows", 300, () => loadFlows().catch(() => {}));
    } else {
      job.state = ev.state;
      job.error = ev.error;
      if (ev.state === "running") {
        job.started_at = ev.at;
        job.finished_at = null;
      } else if (FINAL.has(ev.state)) {
        if (!job.finished_at) job.finished_at = ev.at;
      } else if (ev.state === "queued" && FINAL.has(ev.previous)) {
        job.started_at = null;
        job.finished_at = null;
        job.error_node = null;
      }
    }
    job._eventSeq = ++eventSeq;
    if (ev.run_id) {
      job.run_id = ev.run_id;
      S.runJob.set(ev.run_id, id);
    }
    markDirty(id);
    // fetch the job's other fields when they changed (new job, start, end, steering)
    refreshJob(id);
    if (S.selected === id) refreshDetail();
    pruneJobs();
  }

  // -- servers ------------------------------------------------------------------------------
  async function loadStatus() {
    const status = await api("GET", "/api/status");
    S.lease = status.lease;
    if (status.lease) {
      const timeout = ms(status.lease.expires_at) - ms(status.lease.heartbeat_at);
      if (timeout > 0) S.leaseTimeout = timeout;
    }
    const seen = new Set();
    for (const server of status.servers || []) {
      seen.add(server.id);
      const old = S.servers.get(server.id) || {};
      const beat = ms(server.heartbeat_at);
      S.servers.set(server.id, {
        ...old, ...server,
        lastBeat: Math.max(old.lastBeat || 0, Math.min(beat, Date.now())),
        running: old.running ?? null,
        queued: old.queued ?? null,
      });
    }
    for (const id of [...S.servers.keys()]) if (!seen.has(id)) S.servers.delete(id);
    S.counts = { ...(status.jobs || {}) };
    S.fileServers = status.file_servers;
    S.listeners = status.listeners;
    for (const job of status.running || []) storeJob(job);
    renderChips();
    renderServers();
    renderRunning();
    renderSideServers();
  }

  // File-drop servers and trigger listeners, as the running `flowmill serve` last wrote them.
  function renderSideServers() {
    if (ui.fileServersBody) {
      const servers = Object.entries((S.fileServers && S.fileServers.servers) || {});
      ui.fileServersBody.replaceChildren(...(servers.length ? servers.map(([name, s]) => el("tr", { "data-file-server": name },
        el("td", {}, name.toUpperCase()),
        el("td", { class: "mono" }, `${s.host}:${s.port}`),
        el("td", {}, el("span", { class: `health ${s.running ? "ok" : "down"}` }, s.running ? "running" : "stopped")),
        el("td", { class: "num" }, String(s.connections ?? "")),
        el("td", { class: "num" }, String(s.uploads_received ?? "")),
        el("td", { class: "num" }, String(s.uploads_refused_busy ?? "")))) :
        [el("tr", { class: "empty" }, el("td", { colspan: "6" }, S.fileServers ? "No file-drop server is switched on." : "No file-drop server is running (flowmill serve starts them)."))]));
    }
    if (ui.listenersBody) {
      const listeners = S.listeners || [];
      ui.listenersBody.replaceChildren(...(listeners.length ? listeners.map((l) => el("tr", { "data-listener": `${l.flow}/${l.node}`, "data-state": l.listening ? "listening" : "down" },
        el("td", {}, l.flow),
        el("td", { class: "mono" }, l.node),
        el("td", { class: "mono" }, l.type),
        el("td", {}, l.listening ? el("span", { class: "health ok" }, "listening")
          : el("span", { class: "health down", title: l.error || "" }, `not listening${l.error ? ": " + l.error : ""}`)),
        el("td", { class: "num" }, String(l.fired)))) :
        [el("tr", { class: "empty" }, el("td", { colspan: "5" }, S.listeners ? "No enabled flow has an event trigger." : "Not running (flowmill serve listens for event triggers)."))]));
    }
  }

  function onHeartbeat(ev) {
    let server = S.servers.get(ev.server_id);
    if (!server) {
      server = { id: ev.server_id, host: "", pid: null, started_at: null };
      S.servers.set(ev.server_id, server);
      debounce("status", 200, () => loadStatus().catch(() => {}));
    }
    Object.assign(server, {
      lastBeat: Date.now(), heartbeat_at: ev.at, role: ev.active ? "active" : "standby",
      running: ev.running, queued: ev.queued,
    });
    if (ev.active) {
      if (!S.lease || S.lease.holder !== ev.server_id) debounce("status", 200, () => loadStatus().catch(() => {}));
      else {
        S.lease.heartbeat_at = ev.at;
        S.lease.expired = false;
      }
    }
    if (S.tab === "servers") renderServerRow(server);
  }

  function serverHealth(server) {
    if (server.role === "stopped") return { level: "stopped", text: "stopped" };
    const age = Date.now() - (server.lastBeat || 0);
    if (age > S.leaseTimeout) return { level: "down", text: `no heartbeat for ${fmtSpan(age)}` };
    if (age > HEARTBEAT_LATE) return { level: "late", text: `heartbeat late (${fmtSpan(age)})` };
    return { level: "ok", text: "ok" };
  }

  function renderServerRow(server) {
    const row = ui.serversBody.querySelector(`tr[data-server-id="${CSS.escape(server.id)}"]`);
    const fresh = serverRow(server);
    if (row) row.replaceWith(fresh);
    else renderServers();
  }

  function serverRow(server) {
    const health = serverHealth(server);
    const role = server.role || "standby";
    return el("tr", { "data-server-id": server.id, "data-role": role, class: `server-row ${health.level}` },
      el("td", { class: "mono" }, server.id, S.lease && S.lease.holder === server.id ? el("span", { class: "tag lease", title: "holds the scheduler lease" }, "lease") : null),
      el("td", {}, server.host || ""),
      el("td", { class: "num" }, server.pid ?? ""),
      el("td", {}, el("span", { class: `role ${role}` }, role)),
      el("td", { class: "nowrap", title: fmtLong(server.started_at) }, server.started_at ? fmtShort(server.started_at) : ""),
      el("td", { class: "heartbeat-age nowrap", "data-beat": String(server.lastBeat || 0) }, heartbeatText(server)),
      el("td", { class: "num" }, role === "stopped" ? "" : server.running ?? "–"),
      el("td", { class: "num" }, role === "stopped" ? "" : server.queued ?? "–"),
      el("td", {}, el("span", { class: `health ${health.level}` }, health.text)));
  }

  function heartbeatText(server) {
    if (!server.lastBeat) return "never";
    return `${fmtSpan(Date.now() - server.lastBeat, true)} ago`;
  }

  const ROLE_ORDER = { active: 0, standby: 1, stopped: 2 };
  const STOPPED_SHOWN = 5;

  function renderServers() {
    const rank = (s) => ROLE_ORDER[s.role] ?? 1;
    let servers = [...S.servers.values()].sort((a, b) => rank(a) - rank(b) || (b.lastBeat || 0) - (a.lastBeat || 0));
    // servers that stopped cleanly stay registered: show the latest few
    const stopped = servers.filter((s) => s.role === "stopped");
    if (stopped.length > STOPPED_SHOWN) servers = servers.filter((s) => s.role !== "stopped" || stopped.indexOf(s) < STOPPED_SHOWN);
    ui.serversBody.replaceChildren(...(servers.length ? servers.map(serverRow)
      : [el("tr", { class: "empty" }, el("td", { colspan: "9" }, "No batch server has registered: jobs stay queued until `flowmill serve` runs."))]));
    renderCards();
  }

  function renderCards() {
    const active = [...S.servers.values()].find((s) => s.role === "active");
    const standby = [...S.servers.values()].filter((s) => s.role === "standby" && serverHealth(s).level !== "down").length;
    const lease = S.lease;
    const card = (label, value, sub, cls) => el("div", { class: `card ${cls || ""}` },
      el("div", { class: "card-label" }, label), el("div", { class: "card-value" }, value), el("div", { class: "card-sub" }, sub || ""));
    ui.cards.replaceChildren(
      card("Active server", active ? active.id : "none", lease ? `lease ${lease.expired ? "expired" : "held"} since ${fmtShort(lease.acquired_at)}` : "no lease", active ? "" : "bad"),
      card("Standby servers", String(standby), standby ? "take over when the lease expires" : "none: no fail-over", "neutral"),
      card("Queue", fmtCount(active && active.queued !== null && active.queued !== undefined ? active.queued : (S.counts.queued || 0)), `${fmtCount(S.counts.held || 0)} held`),
      card("Running", fmtCount(S.counts.running || 0), `${fmtCount(S.counts.failed || 0)} failed in total`, S.counts.running ? "run" : ""));
  }

  function renderRunning() {
    if (!ui.runningBody) return;
    const running = [...S.jobs.values()].filter((j) => j.state === "running").sort((a, b) => a.id - b.id);
    ui.runningBody.replaceChildren(...(running.length ? running.map((job) => el("tr", { "data-job-id": job.id },
      el("td", { class: "num" }, el("a", { href: "#jobs", onclick: (e) => { e.preventDefault(); showTab("jobs"); selectJob(job.id); } }, `#${job.id}`)),
      el("td", {}, job.flow),
      el("td", { class: "mono" }, job.worker || ""),
      el("td", {}, fmtShort(job.started_at)),
      durationCell(job),
      progressCell(job))) : [el("tr", { class: "empty" }, el("td", { colspan: "6" }, "Nothing is running."))]));
  }

  // -- alarms ---------------------------------------------------------------------------------
  let alarmKey = "";

  function alarms() {
    const list = [];
    const servers = [...S.servers.values()].filter((s) => s.role !== "stopped");
    if (S.loaded && !servers.length) list.push({ level: "bad", text: "No batch server is running: jobs stay queued.", servers: true });
    else if (S.loaded && !servers.some((s) => s.role === "active" && serverHealth(s).level !== "down")) {
      list.push({ level: "bad", text: "No active batch server: nothing is started until a server holds the scheduler lease.", servers: true });
    }
    for (const server of servers) {
      const health = serverHealth(server);
      if (health.level !== "ok") list.push({ level: health.level === "down" ? "bad" : "warn", text: `Server ${server.id} (${server.role || "?"}): ${health.text}.`, servers: true });
    }
    const socket = Flowmill.state.socket;
    if (socket && !socket.connected) {
      if (!S.offlineSince) S.offlineSince = Date.now();
    } else {
      S.offlineSince = 0;
    }
    if (S.loaded && S.offlineSince && Date.now() - S.offlineSince > 3000) {
      list.push({ level: "warn", text: "Live updates are disconnected; reconnecting… (what you see may be out of date)" });
    }
    const dayAgo = Date.now() - 86400000;
    const failed = [...S.jobs.values()].filter((j) => PROBLEM.has(j.state) && ms(j.finished_at || j.submitted_at) > dayAgo).length;
    if (failed > S.dismissedFailures) {
      list.push({ level: "bad", text: `${failed} job${failed === 1 ? "" : "s"} did not succeed in the last 24 h.`, failed });
    }
    return list;
  }

  function renderAlarms() {
    const list = alarms();
    const key = JSON.stringify(list.map((a) => [a.level, a.text.replace(/\d+(\.\d)? (s|min)/g, "")]));
    ui.serversAlarm.hidden = !list.some((a) => a.servers);
    if (key === alarmKey) {
      // only the ages changed: update the texts in place
      [...ui.alarms.querySelectorAll(".alarm-text")].forEach((node, i) => { if (list[i]) node.textContent = list[i].text; });
      return;
    }
    alarmKey = key;
    ui.alarms.hidden = !list.length;
    ui.alarms.replaceChildren(...list.map((a) => el("div", { class: `alarm ${a.level}` },
      el("span", { class: "alarm-icon", "aria-hidden": "true" }, a.level === "bad" ? "●" : "▲"),
      el("span", { class: "alarm-text" }, a.text),
      a.servers ? el("button", { type: "button", class: "link-button", onclick: () => showTab("servers") }, "Servers") : null,
      a.failed ? el("button", { type: "button", class: "link-button", onclick: () => { showTab("jobs"); setFilter({ state: "@problem" }); } }, "Show") : null,
      a.failed ? el("button", { type: "button", class: "link-button", title: "hide until another job fails", onclick: () => { S.dismissedFailures = a.failed; renderAlarms(); } }, "Dismiss") : null)));
  }

  // -- schedules, calendars, time conditions --------------------------------------------------
  async function loadSchedules() {
    const [schedules, calendars, conditions] = await Promise.all([
      api("GET", "/api/schedules?upcoming=5"),
      api("GET", "/api/calendars"),
      api("GET", "/api/conditions"),
    ]);
    S.schedules = schedules;
    S.calendars = calendars;
    S.conditions = conditions;
    renderSchedules();
    renderCalendars();
    renderConditions();
  }

  function whenText(spec) {
    if (spec.cron) return el("span", {}, el("code", {}, spec.cron));
    if (spec.every) return el("span", {}, "every ", el("code", {}, spec.every));
    return "";
  }

  function windowsText(windows) {
    return DAY_KINDS.filter(([k]) => windows && windows[k]).map(([k]) => `${k} ${windows[k]}`).join("; ");
  }

  function renderSchedules() {
    const write = can("schedules.write");
    ui.newSchedule.hidden = !write;
    const rows = S.schedules.map((s) => {
      const spec = s.spec || {};
      const trigger = s.name.startsWith("flow:");
      const fires = s.next_fires || [];
      return el("tr", { "data-schedule": s.name, class: s.error ? "has-error" : (s.enabled ? "" : "disabled") },
        el("td", {}, el("div", { class: "strong" }, s.name), trigger ? el("div", { class: "muted small" }, "from the flow's trigger.schedule node") : null),
        el("td", {}, s.flow),
        el("td", {}, whenText(spec), el("div", { class: "muted small" }, [spec.tz || "Europe/Berlin", spec.misfire === "skip" ? "skip missed" : "run one missed"].join(" · "))),
        el("td", {}, spec.calendar ? el("div", {}, "calendar ", el("b", {}, spec.calendar)) : null,
          spec.condition ? el("div", {}, "condition ", el("b", {}, spec.condition)) : null,
          spec.windows ? el("div", { class: "small" }, windowsText(spec.windows)) : null,
          !spec.calendar && !spec.condition && !spec.windows ? el("span", { class: "muted" }, "every day") : null),
        el("td", { class: "next-fires" },
          s.error ? el("div", { class: "error-text" }, s.error)
            : !s.enabled ? el("span", { class: "muted" }, "disabled")
              : fires.length ? el("ol", { class: "fires" }, fires.slice(0, 3).map((f, i) => el("li", { title: f, class: "next-fire" },
                fmtZoned(f, spec.tz), i === 0 ? el("span", { class: "muted small rel", "data-rel": f }, ` ${fmtRelative(f)}`) : null)),
              fires.length > 3 ? el("li", { class: "more muted small", title: fires.slice(3).map((f) => fmtZoned(f, spec.tz)).join("\n") }, `+${fires.length - 3} more`) : null)
                : el("span", { class: "muted" }, "never fires again")),
        // a new schedule's last_fire is its creation time: it has not fired yet
        el("td", { class: "nowrap", title: fmtLong(s.last_fire) }, s.last_fire && s.last_fire !== s.created_at ? fmtShort(s.last_fire) : el("span", { class: "muted" }, "not yet")),
        el("td", { class: "row-actions" }, write && !trigger ? [
          el("button", { type: "button", class: "small", "data-action": "edit-schedule", onclick: () => scheduleDialog(s) }, "Edit"),
          el("button", { type: "button", class: "small danger", "data-action": "delete-schedule", onclick: () => deleteSchedule(s) }, "Delete"),
        ] : null));
    });
    ui.schedulesBody.replaceChildren(...(rows.length ? rows : [el("tr", { class: "empty" }, el("td", { colspan: "7" },
      "No schedules yet.", write ? " Create one with “New schedule”." : ""))]));
  }

  function optionList(values, current, noneLabel) {
    return [el("option", { value: "" }, noneLabel),
      ...values.map((v) => el("option", { value: v, selected: v === current }, v))];
  }

  async function scheduleDialog(existing) {
    try {
      const [flows] = await Promise.all([api("GET", "/api/flows"), loadSchedules()]);
      S.flows = flows;
    } catch (e) {
      fail(e, "Loading flows");
      return;
    }
    if (!S.flows.length) {
      toast("There are no flows on the server yet: create one in the editor first.", "error");
      return;
    }
    const spec = existing ? existing.spec || {} : {};
    const name = el("input", { name: "name", value: existing ? existing.name : null, readonly: !!existing, required: true, placeholder: "e.g. nightly-prices", autocomplete: "off" });
    const flow = el("select", { name: "flow" }, S.flows.map((f) => el("option", { value: f.id, selected: existing ? existing.flow === f.id : false }, f.name && f.name !== f.id ? `${f.name} (${f.id})` : f.id)));
    const kind = el("select", { name: "kind", class: "short" },
      el("option", { value: "cron", selected: !spec.every }, "Cron"),
      el("option", { value: "every", selected: !!spec.every }, "Interval"));
    const expr = el("input", { name: spec.every ? "every" : "cron", class: "mono", value: spec.every || spec.cron || null, placeholder: "0 2 * * 1-5", required: true });
    const syncKind = () => {
      expr.name = kind.value;
      expr.placeholder = kind.value === "cron" ? "0 2 * * 1-5  (minute hour day month weekday)" : "15m, 2h, 1d, 1h30m";
    };
    kind.addEventListener("change", syncKind);
    syncKind();
    const tzList = el("datalist", { id: "tz-list" }, TIME_ZONES.map((z) => el("option", { value: z })));
    const tz = el("input", { name: "tz", value: spec.tz || "Europe/Berlin", list: "tz-list" });
    const calList = el("datalist", { id: "calendar-list" }, S.calendars.map((c) => el("option", { value: c.name }, c.holidays || "")));
    const calendar = el("input", { name: "calendar", value: spec.calendar || null, list: "calendar-list", placeholder: "none, a calendar, or a region like DE-BY" });
    const condition = el("select", { name: "condition" }, optionList(S.conditions.map((c) => c.name), spec.condition, "none (any time)"));
    const misfire = el("select", { name: "misfire" },
      el("option", { value: "run_once", selected: spec.misfire !== "skip" }, "run one missed run"),
      el("option", { value: "skip", selected: spec.misfire === "skip" }, "skip missed runs"));
    const priority = el("input", { name: "priority", type: "number", step: "1", min: "-1000", max: "1000", value: String(existing ? existing.priority || 0 : 0), class: "short" });
    const paramsSlot = el("div", { class: "params-slot" });
    let params = null;
    const showParams = async () => {
      try {
        const doc = await flowDoc(flow.value);
        params = paramsForm(doc.flow.params || {}, existing && existing.flow === flow.value ? existing.params || {} : {});
        paramsSlot.replaceChildren(params);
      } catch (e) {
        paramsSlot.replaceChildren(el("p", { class: "error" }, e.message));
      }
    };
    flow.addEventListener("change", showParams);
    showParams();
    const saved = await openDialog({
      title: existing ? `Edit schedule ${existing.name}` : "New schedule",
      wide: true,
      body: [
        tzList, calList,
        el("div", { class: "form-row" }, field("Name", name), field("Flow", flow)),
        el("div", { class: "form-row" }, field("Repeat", kind), field("Expression", expr, "cron on the wall clock of the time zone, or an interval on absolute time")),
        el("div", { class: "form-row" }, field("Time zone", tz), field("After downtime", misfire), field("Priority", priority)),
        el("div", { class: "form-row" }, field("Calendar", calendar, "its holidays and exclusion dates are skipped"), field("Time condition", condition, "fire only inside its windows")),
        spec.windows ? el("p", { class: "hint" }, `Keeps its own windows: ${windowsText(spec.windows)}`) : null,
        paramsSlot,
      ],
      submit: existing ? "Save schedule" : "Create schedule",
      onSubmit: async () => {
        const body = { name: name.value.trim(), flow: flow.value, tz: tz.value.trim() || "Europe/Berlin", misfire: misfire.value };
        body[kind.value] = expr.value.trim();
        if (calendar.value.trim()) body.calendar = calendar.value.trim();
        if (condition.value) body.condition = condition.value;
        for (const key of ["windows", "anchor", "until", "misfire_grace"]) if (spec[key]) body[key] = spec[key];
        const p = params ? params.values() : {};
        if (Object.keys(p).length) body.params = p;
        body.priority = parseInt(priority.value || "0", 10);
        return api("POST", "/api/schedules", body);
      },
    });
    if (saved && typeof saved === "object") {
      toast(`Schedule ${saved.name} saved${saved.next_fires && saved.next_fires.length ? `; next run ${fmtZoned(saved.next_fires[0], (saved.spec || {}).tz)}` : ""}`, "ok", { ms: 3500 });
      loadSchedules().catch((e) => fail(e, "Loading schedules"));
    }
  }

  async function deleteSchedule(schedule) {
    const ok = await confirmDialog({
      title: `Delete schedule ${schedule.name}?`,
      message: `${schedule.flow} will no longer be started by this schedule. Jobs it already queued stay.`,
      ok: "Delete schedule", cancel: "Keep it", danger: true,
    });
    if (!ok) return;
    try {
      await api("DELETE", `/api/schedules/${encodeURIComponent(schedule.name)}`);
      toast(`Schedule ${schedule.name} deleted`, "ok", { ms: 3500 });
    } catch (e) {
      fail(e, `Deleting schedule ${schedule.name}`);
    }
    loadSchedules().catch((e) => fail(e, "Loading schedules"));
  }

  function usedBy(calendarName) {
    const users = [];
    for (const s of S.schedules) if ((s.spec || {}).calendar === calendarName) users.push(`schedule ${s.name}`);
    for (const c of S.conditions) if (c.calendar === calendarName) users.push(`condition ${c.name}`);
    return users;
  }

  function renderCalendars() {
    const write = can("schedules.write");
    ui.newCalendar.hidden = !write;
    const rows = S.calendars.map((c) => {
      const users = usedBy(c.name);
      return el("tr", { "data-calendar": c.name },
        el("td", { class: "strong" }, c.name),
        el("td", {}, c.holidays ? el("code", {}, c.holidays) : el("span", { class: "muted" }, "none")),
        el("td", {}, c.exclusions.length ? el("div", { class: "dates" }, c.exclusions.slice(0, 12).map((d) => el("span", { class: "date-chip" }, d)),
          c.exclusions.length > 12 ? el("span", { class: "muted small" }, ` +${c.exclusions.length - 12} more`) : null) : el("span", { class: "muted" }, "none")),
        el("td", { class: "small" }, users.length ? users.join(", ") : el("span", { class: "muted" }, "—")),
        el("td", { class: "row-actions" }, write ? el("button", { type: "button", class: "small", "data-action": "edit-calendar", onclick: () => calendarDialog(c) }, "Edit") : null));
    });
    ui.calendarsBody.replaceChildren(...(rows.length ? rows : [el("tr", { class: "empty" }, el("td", { colspan: "5" },
      "No calendars yet. A schedule can also name a region code such as DE-BY directly."))]));
  }

  async function calendarDialog(existing) {
    const name = el("input", { name: "name", value: existing ? existing.name : null, readonly: !!existing, required: true, placeholder: "e.g. plant-munich", autocomplete: "off" });
    const holidays = el("input", { name: "holidays", value: existing ? existing.holidays : null, placeholder: "DE-BY, AT-9, CH-ZH … or empty" });
    const exclusions = el("textarea", { name: "exclusions", rows: "6", class: "mono", placeholder: "2026-12-24\n2026-12-31" });
    exclusions.value = existing ? existing.exclusions.join("\n") : "";
    const saved = await openDialog({
      title: existing ? `Edit calendar ${existing.name}` : "New calendar",
      body: [
        field("Name", name),
        field("Public holidays", holidays, "country or COUNTRY-STATE code; empty: exclusion dates only"),
        field("Exclusion dates", exclusions, "one ISO date (YYYY-MM-DD) per line: company holidays, inventory days …"),
      ],
      submit: existing ? "Save calendar" : "Create calendar",
      onSubmit: () => api("POST", "/api/calendars", {
        name: name.value.trim(),
        holidays: holidays.value.trim() || null,
        exclusions: exclusions.value.split(/[\s,;]+/).map((d) => d.trim()).filter(Boolean),
      }),
    });
    if (saved && typeof saved === "object") {
      toast(`Calendar ${saved.name} saved`, "ok", { ms: 3500 });
      loadSchedules().catch((e) => fail(e, "Loading calendars"));
    }
  }

  function renderConditions() {
    const write = can("schedules.write");
    ui.newCondition.hidden = !write;
    const win = (w) => (w === undefined || w === null || w === "" ? el("span", { class: "muted" }, "all day")
      : w === "none" || w === "never" ? el("span", { class: "closed" }, "closed") : el("code", {}, w));
    const rows = S.conditions.map((c) => el("tr", { "data-condition": c.name },
      el("td", { class: "strong" }, c.name),
      ...DAY_KINDS.map(([k]) => el("td", {}, win((c.windows || {})[k]))),
      el("td", {}, c.calendar || el("span", { class: "muted" }, "—")),
      el("td", { class: "row-actions" }, write ? el("button", { type: "button", class: "small", "data-action": "edit-condition", onclick: () => conditionDialog(c) }, "Edit") : null)));
    ui.conditionsBody.replaceChildren(...(rows.length ? rows : [el("tr", { class: "empty" }, el("td", { colspan: "6" }, "No time conditions yet."))]));
  }

  async function conditionDialog(existing) {
    const windows = (existing && existing.windows) || {};
    const name = el("input", { name: "name", value: existing ? existing.name : null, readonly: !!existing, required: true, placeholder: "e.g. office-hours", autocomplete: "off" });
    const inputs = DAY_KINDS.map(([k]) => el("input", { name: k, class: "mono", value: windows[k] || null, placeholder: "all day" }));
    const calendar = el("select", { name: "calendar" }, optionList(S.calendars.map((c) => c.name), existing ? existing.calendar : null, "none"));
    const saved = await openDialog({
      title: existing ? `Edit time condition ${existing.name}` : "New time condition",
      body: [
        field("Name", name),
        ...DAY_KINDS.map(([, label], i) => field(label, inputs[i], i === 0 ? "HH:MM-HH:MM, several separated by commas; none = closed; empty = all day" : null)),
        field("Holidays from", calendar, "the calendar whose holidays count as Sundays"),
      ],
      submit: existing ? "Save condition" : "Create condition",
      onSubmit: () => {
        const body = { name: name.value.trim(), windows: {} };
        DAY_KINDS.forEach(([k], i) => { if (inputs[i].value.trim()) body.windows[k] = inputs[i].value.trim(); });
        body.calendar = calendar.value || null;
        return api("POST", "/api/conditions", body);
      },
    });
    if (saved && typeof saved === "object") {
      toast(`Time condition ${saved.name} saved`, "ok", { ms: 3500 });
      loadSchedules().catch((e) => fail(e, "Loading time conditions"));
    }
  }

  // -- tabs, ticking and loading --------------------------------------------------------------
  const TABS = ["jobs", "schedules", "calendars", "conditions", "servers"];

  function showTab(tab) {
    if (!TABS.includes(tab)) tab = "jobs";
    S.tab = tab;
    for (const name of TABS) {
      const button = document.getElementById(`tab-${name}`);
      button.setAttribute("aria-selected", String(name === tab));
      button.classList.toggle("active", name === tab);
      document.getElementById(`panel-${name}`).hidden = name !== tab;
    }
    if (location.hash !== `#${tab}`) history.replaceState(null, "", tab === "jobs" ? location.pathname : `#${tab}`);
    if (["schedules", "calendars", "conditions"].includes(tab)) loadSchedules().catch((e) => fail(e, "Loading schedules"));
    if (tab === "servers") loadStatus().catch((e) => fail(e, "Loading servers"));
  }

  function tick() {
    const now = Date.now();
    for (const cell of document.querySelectorAll(".job-duration.ticking")) {
      cell.textContent = fmtSpan(now - Number(cell.dataset.from), true);
    }
    if (S.tab === "servers") {
      for (const server of S.servers.values()) {
        const row = ui.serversBody.querySelector(`tr[data-server-id="${CSS.escape(server.id)}"]`);
        if (!row) continue;
        const health = serverHealth(server);
        if (!row.classList.contains(health.level)) { renderServerRow(server); continue; }
        row.querySelector(".heartbeat-age").textContent = heartbeatText(server);
      }
    }
    if (S.tab === "schedules") {
      for (const rel of document.querySelectorAll("[data-rel]")) rel.textContent = ` ${fmtRelative(rel.dataset.rel)}`;
    }
    renderAlarms();
  }

  async function loadFlows() {
    S.flows = await api("GET", "/api/flows");
    fillFilterOptions();
  }

  async function reloadAll() {
    try {
      await Promise.all([loadFlows(), loadStatus()]);
      await loadJobs();
      fillFilterOptions();
      if (S.selected !== null) refreshDetail();
      if (["schedules", "calendars", "conditions"].includes(S.tab)) await loadSchedules();
    } catch (e) {
      fail(e, "Loading the dashboard");
    }
  }

  function bind() {
    const $ = (id) => document.getElementById(id);
    Object.assign(ui, {
      root: $("dashboard"),
      jobsBody: document.querySelector("#jobs-table tbody"),
      detail: $("job-detail"),
      split: document.querySelector(".jobs-split"),
      chips: $("state-chips"),
      jobsCount: $("tab-jobs-count"),
      filterState: $("filter-state"),
      filterFlow: $("filter-flow"),
      filterText: $("filter-text"),
      alarms: $("alarms"),
      serversAlarm: $("tab-servers-alarm"),
      serversBody: document.querySelector("#servers tbody"),
      runningBody: document.querySelector("#running-jobs tbody"),
      fileServersBody: document.querySelector("#file-servers tbody"),
      listenersBody: document.querySelector("#listeners tbody"),
      cards: $("server-cards"),
      schedulesBody: document.querySelector("#schedules tbody"),
      calendarsBody: document.querySelector("#calendars tbody"),
      conditionsBody: document.querySelector("#conditions tbody"),
      newSchedule: $("new-schedule"),
      newCalendar: $("new-calendar"),
      newCondition: $("new-condition"),
      runFlow: $("run-flow"),
      dialog: $("dialog"),
    });
    for (const name of TABS) $(`tab-${name}`).addEventListener("click", () => showTab(name));
    ui.filterState.addEventListener("change", () => setFilter({ state: ui.filterState.value }));
    ui.filterFlow.addEventListener("change", () => setFilter({ flow: ui.filterFlow.value }));
    ui.filterText.addEventListener("input", () => debounce("text", 120, () => setFilter({ text: ui.filterText.value.trim() })));
    ui.runFlow.addEventListener("click", () => runFlowDialog());
    ui.newSchedule.addEventListener("click", () => scheduleDialog(null));
    ui.newCalendar.addEventListener("click", () => calendarDialog(null));
    ui.newCondition.addEventListener("click", () => conditionDialog(null));
    ui.dialog.addEventListener("cancel", (event) => { event.preventDefault(); closeDialogWith(null); });
    ui.dialog.addEventListener("click", (event) => { if (event.target === ui.dialog) closeDialogWith(null); });
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && !ui.dialog.open && S.selected !== null) closeDetail();
    });
    window.addEventListener("hashchange", () => showTab(location.hash.slice(1)));
  }

  async function start() {
    bind();
    fillFilterOptions();
    // subscribe first, then load: an event that comes in meanwhile is not lost
    Flowmill.live(onEvent);
    const user = await Flowmill.ready;
    S.user = user;
    ui.runFlow.hidden = !can("jobs.run");
    await reloadAll();
    S.loaded = true;
    ui.root.removeAttribute("aria-busy");
    ui.root.classList.add("ready");
    showTab(location.hash.slice(1) || "jobs");
    setInterval(tick, 500);
    // heartbeats keep the servers fresh; this catches servers that went away
    setInterval(() => { if (!document.hidden) loadStatus().catch(() => {}); }, 15000);
    setInterval(() => { if (!document.hidden && S.tab === "schedules") loadSchedules().catch(() => {}); }, 60000);
  }

  start().catch((e) => fail(e, "Starting the dashboard"));
})();
