/* beam_etl dashboard: plain JavaScript over the REST API (docs/api.md, docs/dashboard.md).
 *
 * Everything shown from the API goes through textContent, createTextNode or setAttribute:
 * nothing rendered from data is ever parsed as HTML (a dead letter may hold "<script>").
 * The run report is the one HTML document shown, in a sandboxed srcdoc iframe without scripts.
 */
"use strict";

(() => {
  const KEY_STORAGE = "beam_etl.apiKey";
  const ACTIVE = new Set(["starting", "running"]);
  const OPERATOR_ROLES = new Set(["admin", "operator"]);
  const COUNTER_FIELDS = ["records_in", "records_out", "records_filtered", "records_failed"];
  const RUN_POLL_MS = 1000;
  const LOGS_POLL_MS = 2000;
  const PIPELINES_POLL_ACTIVE_MS = 2000;
  const PIPELINES_POLL_IDLE_MS = 10000;
  const DLQ_PAGE = 50;
  const NUMBER = new Intl.NumberFormat("en");

  const $ = (id) => document.getElementById(id);

  const state = {
    key: null,
    me: null,
    pipelines: [],
    statuses: {},
    pipelinesSig: "",
    selectedPipeline: null,
    run: null, // {id, pipelineId, status, token}
    tab: "counters",
    dlq: { step: "", type: "", offset: 0, total: 0, all: 0 },
    timers: {},
    seq: 0,
  };

  // ------------------------------------------------------------------ DOM helpers

  /** An element with attributes and children; strings become text nodes, never HTML. */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") el.className = value;
      else if (name.startsWith("on") && typeof value === "function") el.addEventListener(name.slice(2), value);
      else el.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : String(child));
    }
    return el;
  }

  const SVG_NS = "http://www.w3.org/2000/svg";

  function s(tag, attrs, ...children) {
    const el = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined) el.setAttribute(name, String(value));
    }
    for (const child of children.flat()) {
      if (child !== null && child !== undefined) el.append(child instanceof Node ? child : String(child));
    }
    return el;
  }

  function badge(status, testid) {
    const value = status || "unknown";
    return h("span", { class: "badge", "data-status": value, "data-testid": testid }, value.replace("_", " "));
  }

  function setBadge(el, status) {
    const value = status || "unknown";
    el.setAttribute("data-status", value);
    el.textContent = value.replace("_", " ");
  }

  const fmtNumber = (v) => (typeof v === "number" ? NUMBER.format(v) : v === null || v === undefined ? "—" : String(v));
  const fmtTime = (v) => (v ? String(v).replace("T", " ").replace(/\.\d+/, "").replace("+00:00", "Z") : "—");

  function clearTimer(name) {
    if (state.timers[name]) clearTimeout(state.timers[name]);
    delete state.timers[name];
  }

  function later(name, ms, fn) {
    clearTimer(name);
    state.timers[name] = setTimeout(() => {
      delete state.timers[name];
      fn();
    }, ms);
  }

  // ------------------------------------------------------------------ API

  class ApiError extends Error {
    constructor(status, detail) {
      super(formatDetail(detail));
      this.status = status;
      this.detail = detail;
    }
  }

  /** FastAPI's ``detail``: a string, or a list of {loc, msg} (validation), or anything else as JSON. */
  function formatDetail(detail) {
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) {
      return detail
        .map((item) => {
          if (!item || typeof item !== "object") return String(item);
          const loc = Array.isArray(item.loc) ? item.loc.filter((p) => p !== "body").join(".") : "";
          return loc ? `${loc}: ${item.msg}` : String(item.msg ?? JSON.stringify(item));
        })
        .join("\n");
    }
    return JSON.stringify(detail);
  }

  async function api(method, path, { body, text } = {}) {
    const headers = { "X-API-Key": state.key || "" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
      });
    } catch (err) {
      throw new ApiError(0, `the API did not answer (${err.message})`);
    }
    if (!response.ok) {
      const raw = await response.text();
      let detail = raw || response.statusText;
      try {
        const parsed = JSON.parse(raw);
        if (parsed && typeof parsed === "object" && "detail" in parsed) detail = parsed.detail;
      } catch {
        /* not JSON: keep the text */
      }
      const err = new ApiError(response.status, detail);
      if (response.status === 401 && state.me) {
        err.handled = true;
        logout(`Your API key was rejected (HTTP 401): ${formatDetail(detail)}`);
      }
      throw err;
    }
    if (text) return response.text();
    if (response.status === 204) return null;
    return response.json();
  }

  // ------------------------------------------------------------------ banner

  function showError(context, err) {
    if (err && err.handled) return;
    const status = err && err.status ? `HTTP ${err.status}: ` : "";
    const message = err instanceof Error ? err.message : String(err);
    $("banner-text").textContent = `${context} — ${status}${message}`;
    $("banner").hidden = false;
  }

  function clearError() {
    $("banner").hidden = true;
    $("banner-text").textContent = "";
  }

  function confirmDialog(title, text, confirmLabel) {
    const dialog = $("confirm-dialog");
    $("confirm-title").textContent = title;
    $("confirm-text").textContent = text;
    dialog.querySelector("[value=confirm]").textContent = confirmLabel;
    dialog.returnValue = "";
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "confirm"), { once: true });
      dialog.showModal();
    });
  }

  // ------------------------------------------------------------------ session

  const canOperate = () => Boolean(state.me && OPERATOR_ROLES.has(state.me.role));

  async function login(key) {
    state.key = key;
    try {
      state.me = await api("GET", "/whoami");
    } catch (err) {
      state.key = null;
      if (err.status === 401 || err.status === 403) sessionStorage.removeItem(KEY_STORAGE);
      showLogin();
      showError("Log in failed", err);
      return;
    }
    sessionStorage.setItem(KEY_STORAGE, key);
    clearError();
    $("session-tenant").textContent = state.me.tenant ?? state.me.tenant_id ?? "";
    $("session-role").textContent = state.me.role ?? "";
    $("session-role").setAttribute("data-role", state.me.role ?? "");
    $("session").hidden = false;
    $("login").hidden = true;
    $("app").hidden = false;
    $("api-key").value = "";
    applyRole();
    await refreshPipelines();
    route();
  }

  function logout(message) {
    for (const name of Object.keys(state.timers)) clearTimer(name);
    state.key = null;
    state.me = null;
    state.pipelines = [];
    state.statuses = {};
    state.pipelinesSig = "";
    state.selectedPipeline = null;
    state.run = null;
    sessionStorage.removeItem(KEY_STORAGE);
    $("pipelines-body").replaceChildren();
    closeRuns();
    closeRun();
    history.replaceState(null, "", location.pathname);
    showLogin();
    if (message) showError("Logged out", message);
    else clearError();
  }

  function showLogin() {
    $("session").hidden = true;
    $("app").hidden = true;
    $("login").hidden = false;
    $("api-key").focus();
  }

  function applyRole() {
    const allowed = canOperate();
    $("register-form").hidden = !allowed;
    $("register-denied").hidden = allowed;
    $("dlq-replay").disabled = !allowed;
    $("dlq-replay").title = allowed ? "" : "Your role cannot replay dead letters";
  }

  // ------------------------------------------------------------------ pipelines

  async function refreshPipelines() {
    clearTimer("pipelines");
    if (!state.me) return;
    try {
      const pipelines = await api("GET", "/pipelines");
      const statuses = await Promise.all(
        pipelines.map((p) =>
          api("GET", `/pipelines/${encodeURIComponent(p.id)}/status`).catch((err) => ({
            status: "unknown",
            error: err.message,
          })),
        ),
      );
      if (!state.me) return;
      state.pipelines = pipelines;
      state.statuses = Object.fromEntries(pipelines.map((p, i) => [p.id, statuses[i]]));
      renderPipelines();
      if (state.selectedPipeline) await refreshRuns();
    } catch (err) {
      showError("Loading the pipelines failed", err);
    }
    if (!state.me) return;
    const anyActive = Object.values(state.statuses).some((st) => ACTIVE.has(st.status));
    later("pipelines", anyActive ? PIPELINES_POLL_ACTIVE_MS : PIPELINES_POLL_IDLE_MS, refreshPipelines);
  }

  function renderPipelines() {
    const allowed = canOperate();
    const sig = JSON.stringify([allowed, state.selectedPipeline, state.pipelines, state.statuses]);
    if (sig === state.pipelinesSig) return;
    state.pipelinesSig = sig;
    const denied = allowed ? null : "Your role (viewer) cannot start or stop runs";
    const rows = state.pipelines.map((p) => {
      const st = state.statuses[p.id] || { status: "unknown" };
      const active = ACTIVE.has(st.status);
      return h(
        "tr",
        {
          "data-testid": "pipeline-row",
          "data-pipeline-id": p.id,
          "data-pipeline-name": p.name,
          class: state.selectedPipeline === p.id ? "selected" : null,
        },
        h("td", {}, h("button", { type: "button", class: "link", onclick: () => openRuns(p.id) }, p.name)),
        h("td", {}, h("code", {}, p.template)),
        h(
          "td",
          {},
          badge(st.status, "pipeline-status"),
          st.run_id ? h("span", { class: "muted" }, " ", st.run_id) : null,
        ),
        h(
          "td",
          { class: "actions" },
          h(
            "button",
            {
              type: "button",
              "data-testid": "start-button",
              "aria-label": `Start ${p.name}`,
              disabled: !allowed || active,
              title: denied,
              onclick: () => startPipeline(p),
            },
            "Start",
          ),
          h(
            "button",
            {
              type: "button",
              "data-testid": "stop-button",
              "aria-label": `Stop ${p.name}`,
              disabled: !allowed || !active,
              title: denied,
              onclick: () => stopPipeline(p),
            },
            "Stop",
          ),
          h(
            "button",
            { type: "button", "data-testid": "runs-button", "aria-label": `Runs of ${p.name}`, onclick: () => openRuns(p.id) },
            "Runs",
          ),
        ),
      );
    });
    $("pipelines-body").replaceChildren(...rows);
    $("pipelines-empty").hidden = state.pipelines.length > 0;
  }

  async function startPipeline(p) {
    try {
      const started = await api("POST", `/pipelines/${encodeURIComponent(p.id)}/start`);
      clearError();
      state.selectedPipeline = p.id;
      await refreshPipelines();
      openRun(started.run_id, p.id);
    } catch (err) {
      showError(`Starting ${p.name} failed`, err);
    }
  }

  async function stopPipeline(p) {
    if (!(await confirmDialog(`Stop ${p.name}?`, "The running run is terminated (SIGTERM, then SIGKILL).", "Stop"))) {
      return;
    }
    try {
      await api("POST", `/pipelines/${encodeURIComponent(p.id)}/stop`);
      clearError();
    } catch (err) {
      showError(`Stopping ${p.name} failed`, err);
    }
    await refreshPipelines();
    if (state.run) pollRun(state.run.token);
  }

  // ------------------------------------------------------------------ register form

  const REGISTER_FIELDS = ["name", "template", "params", "options"];

  function setFieldError(field, message) {
    const el = $(`err-${field}`);
    const input = $(`reg-${field}`);
    el.textContent = message || "";
    el.hidden = !message;
    if (message) input.setAttribute("aria-invalid", "true");
    else input.removeAttribute("aria-invalid");
  }

  async function register(event) {
    event.preventDefault();
    REGISTER_FIELDS.forEach((f) => setFieldError(f, ""));
    const name = $("reg-name").value.trim();
    const template = $("reg-template").value.trim();
    const options = $("reg-options")
      .value.split("\n")
      .map((line) => line.trim())
      .filter(Boolean);
    let params = {};
    let bad = false;
    if (!name) {
      setFieldError("name", "A name is required.");
      bad = true;
    }
    if (!template) {
      setFieldError("template", "A template is required (a bundled name such as quickstart, or a path).");
      bad = true;
    }
    const rawParams = $("reg-params").value.trim();
    if (rawParams) {
      try {
        params = JSON.parse(rawParams);
        if (!params || typeof params !== "object" || Array.isArray(params)) throw new Error("not an object");
      } catch (err) {
        setFieldError("params", `Params must be a JSON object such as {"input": "data.csv"} (${err.message}).`);
        bad = true;
      }
    }
    if (bad) return;
    try {
      const created = await api("POST", "/pipelines", { body: { name, template, params, options } });
      clearError();
      $("reg-name").value = "";
      state.selectedPipeline = created.id;
      await refreshPipelines();
      openRuns(created.id);
    } catch (err) {
      if (err.status === 422 && Array.isArray(err.detail)) {
        for (const item of err.detail) {
          const loc = (item.loc || []).filter((p) => p !== "body");
          const field = REGISTER_FIELDS.includes(loc[0]) ? loc[0] : null;
          const where = loc.slice(1).join(".");
          if (field) setFieldError(field, where ? `${where}: ${item.msg}` : item.msg);
        }
      } else if (err.status === 409) {
        setFieldError("name", formatDetail(err.detail));
      }
      showError("Registering the pipeline failed", err);
    }
  }

  // ------------------------------------------------------------------ runs of a pipeline

  function openRuns(pipelineId) {
    state.selectedPipeline = pipelineId;
    $("runs").hidden = false;
    const p = state.pipelines.find((x) => x.id === pipelineId);
    $("runs-pipeline").textContent = p ? p.name : pipelineId;
    renderPipelines();
    if (!state.run) setHash(`pipeline=${pipelineId}`);
    refreshRuns();
  }

  function closeRuns() {
    state.selectedPipeline = null;
    $("runs").hidden = true;
    $("runs-body").replaceChildren();
    if (state.me) renderPipelines();
  }

  async function refreshRuns() {
    const pipelineId = state.selectedPipeline;
    if (!pipelineId) return;
    let runs;
    try {
      runs = await api("GET", `/pipelines/${encodeURIComponent(pipelineId)}/runs`);
    } catch (err) {
      showError("Loading the runs failed", err);
      return;
    }
    if (state.selectedPipeline !== pipelineId) return;
    const rows = runs.map((r) =>
      h(
        "tr",
        {
          "data-testid": "run-row",
          "data-run-id": r.run_id,
          class: state.run && state.run.id === r.run_id ? "selected" : null,
        },
        h(
          "td",
          {},
          h(
            "button",
            { type: "button", class: "link mono", "data-testid": "open-run", onclick: () => openRun(r.run_id, pipelineId) },
            r.run_id,
          ),
        ),
        h("td", {}, badge(r.status, "run-row-status")),
        h("td", {}, fmtTime(r.started_at)),
        h("td", {}, fmtTime(r.ended_at)),
        h("td", { class: "num" }, r.exit_code ?? "—"),
      ),
    );
    $("runs-body").replaceChildren(...rows);
    $("runs-empty").hidden = runs.length > 0;
  }

  // ------------------------------------------------------------------ one run

  function openRun(runId, pipelineId) {
    closeRun();
    state.seq += 1;
    state.run = { id: runId, pipelineId: pipelineId || null, status: null, token: state.seq };
    state.dlq = { step: "", type: "", offset: 0, total: 0, all: 0 };
    $("run").hidden = false;
    $("run-id").textContent = runId;
    setBadge($("run-status"), "loading");
    selectTab("counters");
    setHash(`run=${runId}`);
    pollRun(state.run.token);
    loadRunDetail(state.run.token);
    if (state.selectedPipeline) refreshRuns();
    $("run").scrollIntoView({ block: "start" });
  }

  function closeRun() {
    for (const name of ["run", "logs"]) clearTimer(name);
    state.run = null;
    $("run").hidden = true;
    $("run-error").hidden = true;
    $("run-meta").replaceChildren();
    $("run-meta").hidden = true;
    $("totals").replaceChildren();
    $("counters-body").replaceChildren();
    $("dlq-body").replaceChildren();
    $("dlq-groups-body").replaceChildren();
    $("dlq-step").replaceChildren(h("option", { value: "" }, "all"));
    $("dlq-type").replaceChildren(h("option", { value: "" }, "all"));
    $("dlq-page").textContent = "";
    $("dlq-replayed").hidden = true;
    $("lineage").replaceChildren();
    $("lineage-info").textContent = "";
    $("report-frame").removeAttribute("srcdoc");
    $("logs").textContent = "";
    $("tab-dlq").textContent = "Dead letters";
  }

  const current = (token) => state.run && state.run.token === token;

  async function pollRun(token) {
    clearTimer("run");
    if (!current(token)) return;
    const run = state.run;
    const before = run.status;
    try {
      const counters = await api("GET", `/runs/${encodeURIComponent(run.id)}/counters`);
      if (!current(token)) return;
      renderCounters(counters);
      run.status = counters.status;
    } catch (err) {
      if (!current(token)) return;
      showError(`Loading the counters of run ${run.id} failed`, err);
      if (err.handled) return;
      if (ACTIVE.has(before) || before === null) later("run", 3 * RUN_POLL_MS, () => pollRun(token));
      return;
    }
    setBadge($("run-status"), run.status);
    if (ACTIVE.has(run.status)) {
      later("run", RUN_POLL_MS, () => pollRun(token));
    } else if (before === null || ACTIVE.has(before)) {
      await runFinished(token);
    }
    if (before !== run.status) refreshPipelines();
  }

  function renderCounters(counters) {
    const elapsed = typeof counters.elapsed_s === "number" ? `${counters.elapsed_s.toFixed(1)} s` : "";
    $("run-live").textContent = counters.live ? `live · ${elapsed}` : elapsed ? `final · ${elapsed}` : "";
    $("run-live").setAttribute("data-live", counters.live ? "true" : "false");
    renderTotals(counters.totals || {});
    const steps = Object.entries(counters.steps || {});
    $("counters-body").replaceChildren(
      ...steps.map(([step, c]) =>
        h(
          "tr",
          { "data-testid": "counter-row", "data-step": step },
          h("th", { scope: "row" }, step),
          ...COUNTER_FIELDS.map((f) => h("td", { class: "num", "data-field": f }, fmtNumber(c ? c[f] : null))),
        ),
      ),
    );
    $("counters-empty").hidden = steps.length > 0;
  }

  function renderTotals(totals) {
    $("totals").replaceChildren(
      ...Object.entries(totals).map(([name, value]) =>
        h(
          "div",
          { "data-testid": "total", "data-total": name },
          h("dt", {}, name.replace(/_/g, " ")),
          h("dd", {}, typeof value === "object" && value !== null ? JSON.stringify(value) : fmtNumber(value)),
        ),
      ),
    );
  }

  function runLink(runId, pipelineId, testid) {
    return h(
      "a",
      {
        href: `#run=${encodeURIComponent(runId)}`,
        "data-testid": testid,
        "data-run-id": runId,
        onclick: (event) => {
          event.preventDefault();
          openRun(runId, pipelineId);
        },
      },
      runId,
    );
  }

  /** The run's record (/runs/{id}): pipeline, replay origin, error; on a finished run also totals and DLQ size. */
  async function loadRunDetail(token) {
    const run = state.run;
    let detail;
    try {
      detail = await api("GET", `/runs/${encodeURIComponent(run.id)}`);
    } catch (err) {
      if (current(token)) showError(`Loading run ${run.id} failed`, err);
      return;
    }
    if (!current(token)) return;
    run.pipelineId = run.pipelineId || detail.pipeline_id || null;
    const pipeline = state.pipelines.find((p) => p.id === run.pipelineId);
    const meta = [];
    if (pipeline) meta.push("Pipeline ", h("strong", {}, pipeline.name));
    if (detail.replay_of) {
      const origin = runLink(detail.replay_of, run.pipelineId, "replay-of");
      meta.push(meta.length ? " · replay of run " : "Replay of run ", origin);
    }
    $("run-meta").replaceChildren(...meta);
    $("run-meta").hidden = meta.length === 0;
    if (ACTIVE.has(run.status) || ACTIVE.has(detail.status)) return;
    if (detail.totals && Object.keys(detail.totals).length) renderTotals(detail.totals);
    $("tab-dlq").textContent = `Dead letters (${NUMBER.format(detail.dead_letters ?? 0)})`;
    const error = (detail.ledger && detail.ledger.error) || (detail.summary && detail.summary.error) || "";
    $("run-error").textContent = error ? `Error: ${error}` : "";
    $("run-error").hidden = !error;
  }

  async function runFinished(token) {
    await loadRunDetail(token);
    if (!current(token)) return;
    if (state.selectedPipeline) refreshRuns();
    if (state.tab !== "counters") loadTab(state.tab);
  }

  // ------------------------------------------------------------------ tabs

  const TABS = ["counters", "dlq", "lineage", "report", "logs"];

  function selectTab(tab) {
    state.tab = tab;
    for (const name of TABS) {
      const selected = name === tab;
      $(`tab-${name}`).setAttribute("aria-selected", String(selected));
      $(`tab-${name}`).tabIndex = selected ? 0 : -1;
      $(`panel-${name}`).hidden = !selected;
    }
    if (state.run) loadTab(tab);
  }

  function loadTab(tab) {
    clearTimer("logs");
    if (tab === "dlq") loadDlq();
    else if (tab === "lineage") loadLineage();
    else if (tab === "report") loadReport();
    else if (tab === "logs") loadLogs(state.run.token);
  }

  function tabKeys(event) {
    const i = TABS.indexOf(state.tab);
    let next = null;
    if (event.key === "ArrowRight") next = TABS[(i + 1) % TABS.length];
    else if (event.key === "ArrowLeft") next = TABS[(i + TABS.length - 1) % TABS.length];
    else if (event.key === "Home") next = TABS[0];
    else if (event.key === "End") next = TABS[TABS.length - 1];
    if (!next) return;
    event.preventDefault();
    selectTab(next);
    $(`tab-${next}`).focus();
  }

  // ------------------------------------------------------------------ dead letters

  /** The filter's choices; a choice the user made but has not applied yet is kept. */
  function fillSelect(select, values) {
    const current = [...select.options].slice(1).map((o) => o.value);
    if (current.length === values.length && current.every((v, i) => v === values[i])) return;
    const keep = select.value;
    const options = [h("option", { value: "" }, "all"), ...values.map((v) => h("option", { value: v }, v))];
    select.replaceChildren(...options);
    select.value = values.includes(keep) ? keep : "";
  }

  function recordText(record) {
    if (typeof record === "string") return record;
    try {
      return JSON.stringify(record, null, 1);
    } catch {
      return String(record);
    }
  }

  async function loadDlq() {
    const run = state.run;
    if (!run) return;
    const token = run.token;
    const q = new URLSearchParams({ limit: String(DLQ_PAGE), offset: String(state.dlq.offset) });
    if (state.dlq.step) q.set("step", state.dlq.step);
    if (state.dlq.type) q.set("error_type", state.dlq.type);
    let page;
    try {
      page = await api("GET", `/runs/${encodeURIComponent(run.id)}/dlq?${q}`);
    } catch (err) {
      if (current(token)) showError(`Loading the dead letters of run ${run.id} failed`, err);
      return;
    }
    if (!current(token)) return;
    const groups = page.by_step_and_type || [];
    state.dlq.total = page.total || 0;
    state.dlq.all = groups.reduce((n, g) => n + (g.count || 0), 0);
    $("tab-dlq").textContent = `Dead letters (${NUMBER.format(state.dlq.all)})`;
    fillSelect($("dlq-step"), [...new Set(groups.map((g) => g.step))].sort());
    fillSelect($("dlq-type"), [...new Set(groups.map((g) => g.error_type))].sort());
    $("dlq-groups-body").replaceChildren(
      ...groups.map((g) =>
        h(
          "tr",
          { "data-testid": "dlq-group" },
          h("td", {}, g.step),
          h("td", {}, g.error_type),
          h("td", { class: "num" }, fmtNumber(g.count)),
        ),
      ),
    );
    $("dlq-body").replaceChildren(
      ...(page.records || []).map((item) => {
        const env = item.envelope || {};
        const source = env.source ?? (item.file ? `${item.file}:${item.line}` : "");
        return h(
          "tr",
          { "data-testid": "dlq-row", "data-step": env.step ?? "", "data-error-type": env.error_type ?? "" },
          h("td", {}, env.step ?? ""),
          h("td", {}, env.error_type ?? ""),
          h(
            "td",
            { class: "error" },
            h("span", { "data-testid": "dlq-error" }, env.error ?? ""),
            env.exception ? h("div", { class: "muted" }, env.exception) : null,
          ),
          h("td", { class: "muted error" }, typeof source === "string" ? source : JSON.stringify(source)),
          h(
            "td",
            { class: "record" },
            h("pre", { "data-testid": "dlq-record", tabindex: 0, "aria-label": "Record" }, recordText(env.record)),
          ),
        );
      }),
    );
    const first = state.dlq.total ? state.dlq.offset + 1 : 0;
    const last = Math.min(state.dlq.offset + DLQ_PAGE, state.dlq.total);
    $("dlq-page").textContent = `${first}–${last} of ${NUMBER.format(state.dlq.total)}`;
    $("dlq-prev").disabled = state.dlq.offset === 0;
    $("dlq-next").disabled = state.dlq.offset + DLQ_PAGE >= state.dlq.total;
    $("dlq-replay").disabled = !canOperate() || state.dlq.total === 0 || ACTIVE.has(run.status);
  }

  function filterDlq(event) {
    event.preventDefault();
    state.dlq.step = $("dlq-step").value;
    state.dlq.type = $("dlq-type").value;
    state.dlq.offset = 0;
    loadDlq();
  }

  function pageDlq(delta) {
    state.dlq.offset = Math.max(0, state.dlq.offset + delta * DLQ_PAGE);
    loadDlq();
  }

  async function replayDlq() {
    const run = state.run;
    if (!run) return;
    const scope = [state.dlq.step && `step ${state.dlq.step}`, state.dlq.type && `error type ${state.dlq.type}`]
      .filter(Boolean)
      .join(", ");
    const text =
      `Replays ${NUMBER.format(state.dlq.total)} dead letters of run ${run.id}` +
      (scope ? ` (${scope})` : "") +
      " through the same pipeline as a new run.";
    if (!(await confirmDialog("Replay dead letters?", text, "Replay"))) return;
    try {
      const replay = await api("POST", `/runs/${encodeURIComponent(run.id)}/dlq/replay`, {
        body: { step: state.dlq.step || null, error_type: state.dlq.type || null },
      });
      clearError();
      const link = runLink(replay.run_id, replay.pipeline_id, "replay-link");
      $("dlq-replayed").replaceChildren("Replay started as run ", link, ".");
      $("dlq-replayed").hidden = false;
      refreshPipelines();
    } catch (err) {
      showError(`Replaying the dead letters of run ${run.id} failed`, err);
    }
  }

  // ------------------------------------------------------------------ lineage graph

  const NODE_W = 200;
  const NODE_H = 42;
  const GAP_X = 70;
  const GAP_Y = 18;
  const PAD = 16;
  const LEGEND_H = 26;

  function shorten(text, max) {
    const str = String(text);
    if (str.length <= max) return str;
    const tail = Math.ceil((max - 1) * 0.65);
    return `${str.slice(0, max - 1 - tail)}…${str.slice(str.length - tail)}`;
  }

  /** Layered layout of a directed graph: cycles broken by DFS, longest-path layers, barycenter ordering. */
  function layoutDag(nodes, edges) {
    const ids = nodes.map((n) => n.id);
    const known = new Set(ids);
    const succ = new Map(ids.map((id) => [id, []]));
    const pred = new Map(ids.map((id) => [id, []]));
    for (const e of edges) {
      if (known.has(e.from) && known.has(e.to) && e.from !== e.to) succ.get(e.from).push(e.to);
    }
    const mark = new Map();
    const dag = [];
    const visit = (root) => {
      const stack = [[root, 0]];
      mark.set(root, 1);
      while (stack.length) {
        const top = stack[stack.length - 1];
        const next = succ.get(top[0])[top[1]++];
        if (next === undefined) {
          mark.set(top[0], 2);
          stack.pop();
        } else if (mark.get(next) !== 1) {
          dag.push([top[0], next]);
          if (!mark.has(next)) {
            mark.set(next, 1);
            stack.push([next, 0]);
          }
        }
      }
    };
    const hasIncoming = new Set(edges.filter((e) => known.has(e.from) && e.from !== e.to).map((e) => e.to));
    ids.filter((id) => !hasIncoming.has(id)).forEach((id) => mark.has(id) || visit(id));
    ids.forEach((id) => mark.has(id) || visit(id));
    for (const [a, b] of dag) pred.get(b).push(a);

    const layer = new Map(ids.map((id) => [id, 0]));
    const indeg = new Map(ids.map((id) => [id, pred.get(id).length]));
    const out = new Map(ids.map((id) => [id, []]));
    for (const [a, b] of dag) out.get(a).push(b);
    const queue = ids.filter((id) => indeg.get(id) === 0);
    while (queue.length) {
      const u = queue.shift();
      for (const v of out.get(u)) {
        layer.set(v, Math.max(layer.get(v), layer.get(u) + 1));
        indeg.set(v, indeg.get(v) - 1);
        if (indeg.get(v) === 0) queue.push(v);
      }
    }
    const layers = [];
    for (const id of ids) (layers[layer.get(id)] ||= []).push(id);
    const pos = new Map();
    const renumber = () => layers.forEach((l) => l.forEach((id, i) => pos.set(id, i)));
    renumber();
    const bary = (id, near) => {
      const ps = near.get(id).map((x) => pos.get(x));
      return ps.length ? ps.reduce((a, b) => a + b, 0) / ps.length : pos.get(id);
    };
    for (let sweep = 0; sweep < 4; sweep++) {
      const down = sweep % 2 === 0;
      const order = down ? layers.slice(1) : layers.slice(0, -1).reverse();
      for (const l of order) {
        const keys = new Map(l.map((id) => [id, bary(id, down ? pred : out)]));
        l.sort((a, b) => keys.get(a) - keys.get(b) || pos.get(a) - pos.get(b));
        l.forEach((id, i) => pos.set(id, i));
      }
    }
    const tallest = Math.max(1, ...layers.map((l) => l.length));
    const xy = new Map();
    layers.forEach((l, li) => {
      const offset = ((tallest - l.length) * (NODE_H + GAP_Y)) / 2;
      l.forEach((id, i) => {
        xy.set(id, { x: PAD + li * (NODE_W + GAP_X), y: PAD + LEGEND_H + offset + i * (NODE_H + GAP_Y) });
      });
    });
    return {
      xy,
      width: PAD * 2 + layers.length * NODE_W + Math.max(0, layers.length - 1) * GAP_X,
      height: PAD * 2 + LEGEND_H + tallest * NODE_H + (tallest - 1) * GAP_Y,
    };
  }

  function renderLineage(graph) {
    const nodes = graph.nodes || [];
    const edges = (graph.edges || []).filter((e) => e && e.from !== undefined && e.to !== undefined);
    const { xy, width, height } = layoutDag(nodes, edges);
    const svg = s("svg", {
      xmlns: SVG_NS,
      width,
      height,
      viewBox: `0 0 ${width} ${height}`,
      role: "img",
      "aria-label": `Lineage graph: ${nodes.length} nodes, ${edges.length} edges`,
      "data-testid": "lineage-graph",
    });
    svg.append(
      s(
        "defs",
        {},
        s(
          "marker",
          { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto" },
          s("path", { d: "M0,0 L10,5 L0,10 z", fill: "#8a97aa" }),
        ),
      ),
      s(
        "g",
        { class: "legend", transform: `translate(${PAD},${PAD})` },
        s("g", { class: "node dataset" }, s("rect", { width: 14, height: 12, rx: 3 })),
        s("text", { x: 20, y: 10 }, "dataset"),
        s("g", { class: "node step", transform: "translate(90,0)" }, s("rect", { width: 14, height: 12, rx: 1 })),
        s("text", { x: 110, y: 10 }, "step"),
      ),
    );
    for (const e of edges) {
      const a = xy.get(e.from);
      const b = xy.get(e.to);
      if (!a || !b) continue;
      const x1 = a.x + NODE_W;
      const y1 = a.y + NODE_H / 2;
      const x2 = b.x;
      const y2 = b.y + NODE_H / 2;
      const dx = Math.max(30, Math.abs(x2 - x1) / 2);
      svg.append(
        s(
          "path",
          {
            class: "edge",
            d: `M${x1},${y1} C${x1 + dx},${y1} ${x2 - dx},${y2} ${x2},${y2}`,
            "marker-end": "url(#arrow)",
            "data-from": e.from,
            "data-to": e.to,
          },
          s("title", {}, `${e.from} → ${e.to}`),
        ),
      );
    }
    for (const n of nodes) {
      const p = xy.get(n.id);
      const kind = n.kind === "step" ? "step" : "dataset";
      svg.append(
        s(
          "g",
          {
            class: `node ${kind}`,
            transform: `translate(${p.x},${p.y})`,
            "data-testid": "lineage-node",
            "data-node-id": n.id,
            "data-kind": kind,
          },
          s("title", {}, `${kind}: ${n.name ?? n.id}`),
          s("rect", { width: NODE_W, height: NODE_H, rx: kind === "dataset" ? 10 : 3 }),
          s("text", { class: "kind", x: 8, y: 14 }, kind),
          s("text", { x: 8, y: 31 }, shorten(n.name ?? n.id, 26)),
        ),
      );
    }
    const names = new Map(nodes.map((n) => [n.id, n.name ?? n.id]));
    const textual = h(
      "details",
      {},
      h("summary", {}, "The graph as text"),
      h("ul", {}, ...edges.map((e) => h("li", {}, `${names.get(e.from) ?? e.from} → ${names.get(e.to) ?? e.to}`))),
    );
    $("lineage").replaceChildren(svg, textual);
  }

  async function loadLineage() {
    const run = state.run;
    const token = run.token;
    try {
      const graph = await api("GET", `/runs/${encodeURIComponent(run.id)}/lineage`);
      if (!current(token)) return;
      $("lineage-info").textContent =
        `${(graph.nodes || []).length} nodes, ${(graph.edges || []).length} edges, ` +
        `from ${graph.events ?? 0} OpenLineage events.`;
      renderLineage(graph);
    } catch (err) {
      if (current(token)) showError(`Loading the lineage of run ${run.id} failed`, err);
    }
  }

  // ------------------------------------------------------------------ report and logs

  async function fetchReport() {
    return api("GET", `/runs/${encodeURIComponent(state.run.id)}/report`, { text: true });
  }

  async function loadReport() {
    const run = state.run;
    const token = run.token;
    const frame = $("report-frame");
    if (ACTIVE.has(run.status)) {
      frame.srcdoc = "<p style='font-family:sans-serif'>The report is written once the run has finished.</p>";
      return;
    }
    try {
      const html = await fetchReport();
      if (current(token)) frame.srcdoc = html; // sandbox="" : no scripts, opaque origin
    } catch (err) {
      if (current(token)) showError(`Loading the report of run ${run.id} failed`, err);
    }
  }

  async function openReportTab() {
    try {
      const html = await fetchReport();
      const url = URL.createObjectURL(new Blob([html], { type: "text/html" }));
      window.open(url, "_blank", "noopener");
      setTimeout(() => URL.revokeObjectURL(url), 60000);
    } catch (err) {
      showError("Opening the report failed", err);
    }
  }

  async function loadLogs(token) {
    clearTimer("logs");
    if (!current(token)) return;
    const run = state.run;
    try {
      const text = await api("GET", `/runs/${encodeURIComponent(run.id)}/logs?tail=200`, { text: true });
      if (!current(token)) return;
      const pre = $("logs");
      const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.textContent = text;
      if (atBottom) pre.scrollTop = pre.scrollHeight;
    } catch (err) {
      if (current(token)) showError(`Loading the logs of run ${run.id} failed`, err);
    }
    if (current(token) && state.tab === "logs" && ACTIVE.has(state.run.status)) {
      later("logs", LOGS_POLL_MS, () => loadLogs(token));
    }
  }

  // ------------------------------------------------------------------ routing

  function setHash(value) {
    history.replaceState(null, "", `${location.pathname}#${value}`);
  }

  function route() {
    if (!state.me) return;
    const hash = decodeURIComponent(location.hash.slice(1));
    if (hash.startsWith("run=")) {
      const id = hash.slice(4);
      if (!state.run || state.run.id !== id) openRun(id, null);
    } else if (hash.startsWith("pipeline=")) {
      openRuns(hash.slice(9));
    }
  }

  // ------------------------------------------------------------------ wiring

  function init() {
    $("login-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const key = $("api-key").value.trim();
      if (key) login(key);
    });
    $("logout").addEventListener("click", () => logout());
    $("banner-close").addEventListener("click", clearError);
    $("refresh-pipelines").addEventListener("click", refreshPipelines);
    $("register-form").addEventListener("submit", register);
    $("close-runs").addEventListener("click", closeRuns);
    $("close-run").addEventListener("click", () => {
      closeRun();
      setHash(state.selectedPipeline ? `pipeline=${state.selectedPipeline}` : "");
      if (state.selectedPipeline) refreshRuns();
    });
    for (const tab of TABS) $(`tab-${tab}`).addEventListener("click", () => selectTab(tab));
    document.querySelector("[role=tablist]").addEventListener("keydown", tabKeys);
    $("dlq-filter").addEventListener("submit", filterDlq);
    $("dlq-prev").addEventListener("click", () => pageDlq(-1));
    $("dlq-next").addEventListener("click", () => pageDlq(1));
    $("dlq-replay").addEventListener("click", replayDlq);
    $("report-open").addEventListener("click", openReportTab);
    $("logs-refresh").addEventListener("click", () => state.run && loadLogs(state.run.token));
    window.addEventListener("hashchange", route);

    const saved = sessionStorage.getItem(KEY_STORAGE);
    if (saved) login(saved);
    else showLogin();
  }

  init();
})();
