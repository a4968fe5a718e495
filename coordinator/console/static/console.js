// radfed console: the little JavaScript the server-rendered pages need.
// Everything goes through the same /v1 API as the CLI; a call that changes something carries the
// X-Radfed-Console header (the session cookie alone is not enough: cross-site request forgery).
"use strict";

const PREFIX = document.body.dataset.prefix || "/console";

async function api(method, path, body) {
  const options = {method, credentials: "same-origin", headers: {"X-Radfed-Console": "1"}};
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  if (response.status === 401) {  // the session ended (signed out elsewhere, token revoked or expired)
    window.location = `${PREFIX}/sign-in?reason=session&next=${encodeURIComponent(window.location.pathname)}`;
    throw new Error("not signed in");
  }
  const type = response.headers.get("content-type") || "";
  const data = type.includes("application/json") ? await response.json() : await response.blob();
  if (!response.ok) {
    throw new Error((data && data.detail) || `${response.status} ${response.statusText}`);
  }
  return data;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function debounce(fn, ms) {
  let timer = null;
  return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
}

// ---------------------------------------------------------------- live parts of a page

async function freshPage() {
  const response = await fetch(window.location.href, {credentials: "same-origin"});
  if (response.redirected) { window.location = response.url; return null; }
  return new DOMParser().parseFromString(await response.text(), "text/html");
}

function replaceFrom(doc, selector) {
  const now = document.querySelector(selector);
  const fresh = doc.querySelector(selector);
  if (now && fresh && now.innerHTML !== fresh.innerHTML) now.innerHTML = fresh.innerHTML;
}

function liveTables() {
  const tables = document.querySelectorAll("table[data-live]");
  if (!tables.length) return;
  setInterval(async () => {
    const doc = await freshPage();
    if (doc) tables.forEach((t) => replaceFrom(doc, `#${t.id} tbody`));
  }, 4000);
}

// ---------------------------------------------------------------- spec editor

function editor() {
  const spec = document.getElementById("spec");
  if (!spec) return;
  const box = document.getElementById("validation");
  const examples = JSON.parse(document.getElementById("examples-data").textContent);
  let checked = null;
  let escaped = false;

  async function validate() {
    if (!spec.value.trim()) { box.replaceChildren(el("p", {class: "muted", text: "Write a spec or load an example."})); checked = null; return; }
    const text = spec.value;
    let answer;
    try {
      answer = await api("POST", "/v1/specs/validate", {text});
    } catch (err) {
      box.replaceChildren(el("p", {class: "error", text: `Cannot validate: ${err.message}`}));
      return;
    }
    if (text !== spec.value) return;  // typed on meanwhile: a newer check is on its way, this one is stale
    checked = answer;
    spec.setAttribute("aria-invalid", checked.valid ? "false" : "true");
    showReference(checked.analysis);
    if (checked.valid) {
      box.replaceChildren(el("p", {class: "ok-note", id: "valid-message",
        text: `Valid ${checked.analysis} spec (hash ${checked.spec_hash.slice(0, 12)}…).`}));
    } else {
      const list = el("ul", {class: "problems", id: "problems"});
      for (const p of checked.problems) {
        const where = [p.line ? `line ${p.line}` : null, p.path || null].filter(Boolean).join(", ");
        list.append(el("li", {text: where ? `${where}: ${p.message}` : p.message}));
      }
      box.replaceChildren(el("p", {class: "error", text: `${checked.problems.length} problem(s):`}), list);
    }
  }
  const later = debounce(validate, 300);
  spec.addEventListener("input", later);
  spec.addEventListener("keydown", (event) => {  // Tab indents; Esc then Tab leaves the editor
    if (event.key === "Escape") { escaped = true; return; }
    if (event.key === "Tab" && !escaped && !event.shiftKey) {
      event.preventDefault();
      const start = spec.selectionStart;
      spec.setRangeText("  ", start, spec.selectionEnd, "end");
      later();
    }
    escaped = false;
  });
  document.getElementById("load-example").addEventListener("click", () => {
    const name = document.getElementById("example").value;
    const example = examples.find((e) => e.name === name);
    if (!example) return;
    spec.value = example.text;
    spec.focus();
    validate();
  });

  function runOptions() {
    const options = {};
    const sites = [...document.querySelectorAll("input[name=sites]")];
    const chosen = sites.filter((s) => s.checked).map((s) => s.value);
    if (chosen.length && chosen.length !== sites.length) options.sites = chosen;
    const quorum = document.getElementById("quorum").value;
    const timeout = document.getElementById("timeout").value;
    if (quorum) options.quorum = Number(quorum);
    if (timeout) options.timeout = Number(timeout);
    return options;
  }
  const status = document.getElementById("run-status");

  document.getElementById("dry-run").addEventListener("click", async () => {
    await validate();
    if (!checked || !checked.valid) { status.textContent = "Fix the spec first (see the problems under it)."; return; }
    status.textContent = "Asking each site what it would run…";
    try {
      const options = runOptions();
      const plan = await api("POST", "/v1/specs/plan", {text: spec.value, sites: options.sites});
      showPlan(plan);
      status.textContent = "Dry run done: nothing was run or released.";
    } catch (err) {
      status.textContent = `Dry run refused: ${err.message}`;
    }
  });

  document.getElementById("submit").addEventListener("click", async () => {
    await validate();
    if (!checked || !checked.valid) { status.textContent = "Fix the spec first (see the problems under it)."; return; }
    status.textContent = "Submitting…";
    try {
      const job = await api("POST", "/v1/jobs", {spec: checked.spec, ...runOptions()});
      window.location = `${PREFIX}/jobs/${job.job_id}`;
    } catch (err) {
      status.textContent = `Not submitted: ${err.message}`;
    }
  });
  if (spec.value.trim()) validate();
}

// ---------------------------------------------------------------- the analysis' fields, from the JSON Schema

let schema = null;

function describeType(prop) {
  if (!prop) return "";
  if (prop.const !== undefined) return JSON.stringify(prop.const);
  if (prop.enum) return prop.enum.map((v) => JSON.stringify(v)).join(" | ");
  if (prop.$ref) return prop.$ref.split("/").pop();
  if (prop.anyOf || prop.oneOf) {
    return (prop.anyOf || prop.oneOf).filter((p) => p.type !== "null").map(describeType).join(" | ");
  }
  if (prop.type === "array") return `list of ${describeType(prop.items) || "values"}`;
  return prop.type || "";
}

async function showReference(kind) {
  const body = document.getElementById("reference-body");
  if (!body) return;
  if (!schema) {
    try { schema = await api("GET", "/v1/specs/schema"); } catch (err) { return; }
  }
  const mapping = schema.properties.analysis.discriminator.mapping;
  if (!kind || !mapping[kind]) {
    body.replaceChildren(el("p", {text: `analysis.type is one of: ${Object.keys(mapping).sort().join(", ")}.`}));
    return;
  }
  const def = schema.$defs[mapping[kind].split("/").pop()];
  const required = new Set(def.required || []);
  const list = el("dl", {class: "fields"});
  for (const [name, prop] of Object.entries(def.properties)) {
    if (name === "type") continue;
    const limits = [prop.minimum !== undefined ? `≥ ${prop.minimum}` : null, prop.maximum !== undefined ? `≤ ${prop.maximum}` : null,
      prop.exclusiveMinimum !== undefined ? `> ${prop.exclusiveMinimum}` : null,
      prop.exclusiveMaximum !== undefined ? `< ${prop.exclusiveMaximum}` : null].filter(Boolean);
    const facts = [describeType(prop), required.has(name) ? "required" : `default ${JSON.stringify(prop.default)}`, ...limits];
    list.append(el("dt", {text: name}), el("dd", {text: facts.filter(Boolean).join("; ")}));
  }
  body.replaceChildren(el("p", {text: `${kind}: ${(def.description || "").replace(/``/g, "")}`}), list);
}

function showPlan(plan) {
  const section = document.getElementById("plan");
  const body = document.getElementById("plan-body");
  const head = el("p", {text: `${plan.analysis}: ${plan.rounds}; first round asks the sites for ${plan.first_round.type}. Spec hash ${plan.spec_hash.slice(0, 12)}….`});
  const cards = plan.sites.map((s) => {
    const card = el("article", {class: "card plan-site", "data-site": s.site});
    card.append(el("h3", {text: s.site}));
    if (s.status !== "ok") {
      card.append(el("p", {class: "error", text: `${s.status}${s.code ? " " + s.code : ""}: ${s.message}`}));
      return card;
    }
    const p = s.plan;
    const verdict = p.allowed ? `allowed (${p.approval === "manual" ? "the site approves it by hand first" : "answered automatically"})`
      : `would be refused: ${p.refusal.code}: ${p.refusal.message}`;
    card.append(el("p", {class: p.allowed ? "ok-note" : "error", text: verdict}));
    card.append(el("p", {class: "muted", text: `${p.backend} CDM; smallest released cell ${p.min_cell_count}; noise ${p.noise}`}));
    if (p.unknown_codes.length) {
      card.append(el("p", {class: "note", text: `Codes this site does not know: ${p.unknown_codes.join(", ")}`}));
    }
    const details = el("details", {}, el("summary", {text: "Compiled SQL and parameters"}),
      el("pre", {class: "sql", text: p.sql}), el("pre", {text: JSON.stringify(p.parameters, null, 1)}));
    card.append(details);
    return card;
  });
  body.replaceChildren(head, ...cards);
  section.hidden = false;
  section.querySelector("h2").setAttribute("tabindex", "-1");
}

// ---------------------------------------------------------------- a job

function job() {
  const root = document.getElementById("job");
  if (!root) return;
  if (root.dataset.finished !== "true") {
    const tick = async () => {
      try {
        await api("GET", `/v1/jobs/${root.dataset.job}?wait=2`);
        const doc = await freshPage();
        if (!doc) return;
        const fresh = doc.getElementById("job");
        if (fresh && fresh.dataset.finished === "true") { window.location.reload(); return; }
        replaceFrom(doc, "#job-sites tbody");
        replaceFrom(doc, "#job-message");
        const badge = document.getElementById("job-status");
        const newBadge = doc.getElementById("job-status");
        if (newBadge && badge.textContent !== newBadge.textContent) {
          badge.textContent = newBadge.textContent;
          badge.className = newBadge.className;
        }
      } catch (err) {
        document.getElementById("job-message").textContent = `Lost contact with the coordinator: ${err.message}; retrying…`;
      }
      setTimeout(tick, 500);
    };
    tick();
    return;
  }
  const box = document.getElementById("figure-box");
  if (box) drawFigure(box, root.dataset.job);
}

async function drawFigure(box, jobId) {
  let figure;
  try {
    figure = await api("GET", box.dataset.figure);
  } catch (err) {
    box.replaceChildren(el("p", {class: "muted", text: `No plot for this result (${err.message}).`}));
    return;
  }
  const target = document.getElementById("figure");
  await window.Plotly.newPlot(target, figure.data, figure.layout, {
    responsive: true, displaylogo: false,
    toImageButtonOptions: {format: "png", filename: `radfed-${jobId.slice(0, 8)}`, scale: 2},
  });
  target.dataset.drawn = "true";
}

// ---------------------------------------------------------------- operator pages

// An operator form: `action(out)` runs on submit; its failure is told in `out`, after `failed`.
function onSubmit(formId, outId, failed, action) {
  const form = document.getElementById(formId);
  if (!form) return;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const out = document.getElementById(outId);
    try {
      await action(out);
    } catch (err) {
      out.replaceChildren(el("p", {class: "error", role: "alert", text: `${failed}: ${err.message}`}));
    }
  });
}

function operator() {
  onSubmit("add-researcher", "add-result", "Not added", async (out) => {
    const days = document.getElementById("new-expiry").value;
    const body = {name: document.getElementById("new-name").value, role: document.getElementById("new-role").value};
    if (days) body.expires_in_days = Number(days);
    const made = await api("POST", "/v1/researchers", body);
    const token = el("input", {id: "new-token", readonly: "", value: made.token, "aria-label": `Token of ${made.name}`, class: "token"});
    const copy = el("button", {type: "button", text: "Copy"});
    copy.addEventListener("click", () => { token.select(); navigator.clipboard && navigator.clipboard.writeText(made.token); });
    out.replaceChildren(el("p", {class: "ok-note", text: `${made.name} (${made.role}) added; token ${made.expires_at ? "expires " + made.expires_at + " UTC" : "does not expire"}. It is shown only now:`}), token, copy);
    token.focus();
    token.select();
    const doc = await freshPage();
    if (doc) replaceFrom(doc, "#researchers-table tbody");
  });
  document.addEventListener("click", async (event) => {
    const button = event.target.closest("button.revoke-researcher, button.revoke-site");
    if (!button) return;
    const name = button.dataset.name;
    const site = button.classList.contains("revoke-site");
    if (!window.confirm(site ? `Revoke site ${name}? Its bus credentials stop working.` : `Revoke the token of ${name}? Their sessions end now.`)) return;
    try {
      await api("DELETE", site ? `/v1/sites/${encodeURIComponent(name)}` : `/v1/researchers/${encodeURIComponent(name)}`);
      const doc = await freshPage();
      if (doc) replaceFrom(doc, site ? "#enrolled-table tbody" : "#researchers-table tbody");
    } catch (err) {
      window.alert(`Not revoked: ${err.message}`);
    }
  });
  onSubmit("enrol-site", "enrol-result", "Not enrolled", async (out) => {
    const name = document.getElementById("site-name").value;
    const blob = await api("POST", "/v1/sites", {name});
    const link = el("a", {href: URL.createObjectURL(blob), download: `radfed-site-${name}.zip`, id: "bundle-link",
      text: `Save the bundle of ${name} again`});
    out.replaceChildren(el("p", {class: "ok-note", text: `Site ${name} enrolled; its bundle is downloading. `}), link);
    link.click();
    const doc = await freshPage();
    if (doc) replaceFrom(doc, "#enrolled-table tbody");
  });
}

document.addEventListener("DOMContentLoaded", () => {
  liveTables();
  editor();
  job();
  operator();
});
