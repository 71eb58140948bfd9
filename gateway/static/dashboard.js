// swarmgate dashboard: the live swarm map (server-sent events) and a streaming chat playground.
"use strict";

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null) continue;
    if (key === "class") node.className = value;
    else if (key === "style") node.style.cssText = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const fmt = {
  int: (n) => (n === null || n === undefined ? "–" : Math.round(n).toLocaleString("en")),
  rate: (n) => (n ? (n >= 100 ? n.toFixed(0) : n.toFixed(1)) : "–"),
  ms: (n) => (n === null || n === undefined ? "–" : n < 10 ? n.toFixed(2) : n.toFixed(0)),
  short: (id) => (id.length > 12 ? "…" + id.slice(-8) : id),
};

// ------------------------------------------------------------------------------ tabs

function showTab(name) {
  for (const tab of document.querySelectorAll("nav [role=tab]")) {
    const on = tab.dataset.panel === name;
    tab.setAttribute("aria-selected", String(on));
    $("#panel-" + tab.dataset.panel).hidden = !on;
  }
  if (name === "playground") $("#prompt").focus();
}
for (const tab of document.querySelectorAll("nav [role=tab]")) {
  tab.addEventListener("click", () => showTab(tab.dataset.panel));
}

// ------------------------------------------------------------------------------ swarm map

function peerGrid(model) {
  const n = model.num_blocks;
  const grid = el("div", { class: "grid", style: `grid-template-columns: max-content repeat(${n}, minmax(10px, 1fr))` });
  grid.append(el("span", { class: "label" }, "block"));
  for (let b = 0; b < n; b++) grid.append(el("span", { class: "axis" }, b % 5 === 0 ? b : ""));
  for (const peer of model.peers) {
    grid.append(el("span", { class: "label", title: peer.peer_id }, fmt.short(peer.peer_id)));
    for (let b = 0; b < n; b++) {
      const on = b >= peer.start && b < peer.end;
      grid.append(el("span", {
        class: on ? `cell on ${peer.status || "online"}` : "cell",
        "data-peer-id": on ? peer.peer_id : null,
        "data-block": on ? b : null,
        title: on ? `${fmt.short(peer.peer_id)} · block ${b} · ${peer.status}` : null,
      }));
    }
  }
  grid.append(el("span", { class: "label" }, "coverage"));
  model.coverage.forEach((count, b) => {
    grid.append(el("span", { class: `cov c${Math.min(count, 2)}`, title: `block ${b}: ${count} server(s)` }));
  });
  return grid;
}

function cacheCell(peer) {
  if (peer.cache_tokens_total) {
    const used = peer.cache_tokens_used || 0;
    const pct = Math.min(100, (100 * used) / peer.cache_tokens_total);
    return el("td", { class: "num" },
      el("span", { class: "bar" }, el("b", { style: `width:${pct.toFixed(1)}%` })),
      `${fmt.int(used)} / ${fmt.int(peer.cache_tokens_total)}`);
  }
  return el("td", { class: "num" }, `${fmt.int(peer.cache_tokens_free)} free`);
}

function peerTable(model) {
  const head = ["peer", "blocks", "state", "dtype / quant", "decode tok/s", "cache tokens used / total", "sessions", "rtt ms"];
  const table = el("table", { class: "peers" }, el("thead", {}, el("tr", {}, ...head.map((h) => el("th", {}, h)))));
  const body = el("tbody");
  for (const p of model.peers) {
    const sessions = p.sessions === null || p.sessions === undefined
      ? "–" : `${p.sessions_active} active · ${p.sessions_kept} kept`;
    body.append(el("tr", { class: "peer-row", "data-peer-id": p.peer_id },
      el("td", { class: "id" }, p.peer_id),
      el("td", { class: "num" }, `${p.start}–${p.end - 1}`),
      el("td", {}, el("span", { class: `state ${p.status}` }, el("i"), p.status)),
      el("td", {}, `${p.dtype} / ${p.quant}`),
      el("td", { class: "num" }, fmt.rate(p.throughput_decode)),
      cacheCell(p),
      el("td", { class: "num" }, sessions),
      el("td", { class: "num" }, fmt.ms(p.rtt_ms)),
    ));
  }
  table.append(body);
  return table;
}

function modelCard(model, served) {
  const covered = model.coverage.filter((c) => c > 0).length;
  const name = model.name || (served && served.name) || "unknown model";
  return el("article", { class: "model", "data-model-hash": model.model_hash, "data-num-blocks": model.num_blocks },
    el("div", { class: "model-head" },
      el("h2", {}, name),
      el("span", { class: "hash", title: model.model_hash }, model.model_hash.slice(0, 12)),
      model.family ? el("span", { class: "muted" }, model.family) : null,
      el("span", { class: model.complete ? "badge ok" : "badge bad" }, model.complete ? "complete" : "incomplete"),
      served ? null : el("span", { class: "badge" }, "not served here"),
      el("span", { class: "coverage-text" },
        `${covered} / ${model.num_blocks} blocks covered · ${model.peers.length} peer${model.peers.length === 1 ? "" : "s"}`),
    ),
    peerGrid(model),
    peerTable(model),
  );
}

let lastSwarm = null;

function renderSwarm(swarm) {
  lastSwarm = swarm;
  const served = new Map((swarm.served || []).map((s) => [s.model_hash, s]));
  const root = $("#models");
  const cards = swarm.models.map((m) => modelCard(m, served.get(m.model_hash)));
  for (const s of swarm.served || []) {
    if (!swarm.models.some((m) => m.model_hash === s.model_hash)) {
      cards.push(el("article", { class: "model" }, el("div", { class: "model-head" },
        el("h2", {}, s.name), el("span", { class: "badge bad" }, "no peers"))));
    }
  }
  root.replaceChildren(...(cards.length ? cards : [el("p", { class: "muted" }, "No peers found yet.")]));
  $("#key-label").classList.toggle("needed", Boolean(swarm.auth_required) && !$("#api-key").value);
  $("#api-key").placeholder = swarm.auth_required ? "required" : "not needed";
  const available = (swarm.served || []).filter((s) => s.available).map((s) => s.name).join(",");
  if (available !== knownAvailable) {
    knownAvailable = available;
    loadModels();
  }
}

function connect() {
  const link = $("#link");
  const source = new EventSource("/dashboard/events");
  source.addEventListener("swarm", (event) => {
    link.textContent = "live · " + new Date().toLocaleTimeString();
    link.classList.add("live");
    renderSwarm(JSON.parse(event.data));
  });
  source.onerror = () => {
    link.textContent = "reconnecting…";
    link.classList.remove("live");
  };
}

// ------------------------------------------------------------------------------ playground

let knownAvailable = null;
const history = [];
let controller = null;

function authHeaders() {
  const key = $("#api-key").value.trim();
  return key ? { Authorization: "Bearer " + key } : {};
}

async function errorOf(response) {
  try {
    const body = await response.json();
    if (body && body.error) return body.error;
  } catch (_) { /* not JSON */ }
  return { message: `HTTP ${response.status} ${response.statusText}`, type: "http_error", code: null };
}

function errorItem(error) {
  const detail = [error.type, error.code, error.param && `param: ${error.param}`].filter(Boolean).join(" · ");
  return el("li", { class: "error", role: "alert" }, error.message || "Request failed",
    detail ? el("span", { class: "meta" }, el("code", {}, detail)) : null);
}

async function loadModels() {
  const select = $("#model");
  const previous = select.value;
  try {
    const response = await fetch("/v1/models", { headers: authHeaders() });
    if (!response.ok) {
      const error = await errorOf(response);
      if (response.status === 401) $("#key-label").classList.add("needed");
      select.replaceChildren(el("option", { value: "" }, `(${error.message})`));
      return;
    }
    const ids = (await response.json()).data.map((m) => m.id);
    select.replaceChildren(...ids.map((id) => el("option", { value: id }, id)));
    if (ids.includes(previous)) select.value = previous;
    if (!ids.length) select.replaceChildren(el("option", { value: "" }, "(no model covered yet)"));
  } catch (error) {
    select.replaceChildren(el("option", { value: "" }, `(${error.message})`));
  }
}

function request() {
  const body = { model: $("#model").value, messages: history.slice(), stream: true };
  const temperature = $("#temperature").value;
  const maxTokens = $("#max-tokens").value;
  if (temperature !== "") body.temperature = Number(temperature);
  if (maxTokens !== "") body.max_tokens = Number(maxTokens);
  return body;
}

// Reads an SSE body line by line; calls onData with each parsed `data:` payload until [DONE].
async function readEvents(response, onData) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let newline;
    while ((newline = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, newline).replace(/\r$/, "");
      buffer = buffer.slice(newline + 1);
      if (!line.startsWith("data:")) continue;
      const data = line.slice(5).trim();
      if (data === "[DONE]") return;
      onData(JSON.parse(data));
    }
  }
}

function setBusy(busy) {
  $("#send").disabled = busy;
  $("#stop").hidden = !busy;
}

async function send(text) {
  const log = $("#log");
  history.push({ role: "user", content: text });
  log.append(el("li", { class: "user" }, text));
  const reply = el("li", { class: "assistant streaming", "data-role": "assistant" });
  log.append(reply);
  log.scrollTop = log.scrollHeight;
  controller = new AbortController();
  setBusy(true);
  let content = "";
  let failure = null;
  let finish = null;
  const started = performance.now();
  let tokens = 0;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify(request()),
      signal: controller.signal,
    });
    if (!response.ok) {
      failure = await errorOf(response);
      if (response.status === 401) $("#key-label").classList.add("needed");
    } else {
      await readEvents(response, (chunk) => {
        if (chunk.error) {
          failure = chunk.error;
          return;
        }
        for (const choice of chunk.choices || []) {
          if (choice.delta && choice.delta.content) {
            content += choice.delta.content;
            tokens += 1;
            reply.textContent = content;
            log.scrollTop = log.scrollHeight;
          }
          finish = choice.finish_reason || finish;
        }
      });
    }
  } catch (error) {
    if (error.name !== "AbortError") failure = { message: error.message, type: "network_error" };
    else finish = "stopped";
  } finally {
    controller = null;
    setBusy(false);
    reply.classList.remove("streaming");
  }
  if (content) {
    history.push({ role: "assistant", content });
    const seconds = (performance.now() - started) / 1000;
    reply.append(el("span", { class: "meta" },
      `${tokens} chunks · ${seconds.toFixed(1)} s${finish ? " · " + finish : ""}`));
  } else {
    reply.remove();
    if (!failure) history.pop();
  }
  if (failure) {
    if (!content) history.pop();  // the failed turn is not part of the conversation
    log.append(errorItem(failure));
  }
  log.scrollTop = log.scrollHeight;
}

$("#chat-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const prompt = $("#prompt");
  const text = prompt.value.trim();
  if (!text || controller) return;
  prompt.value = "";
  send(text);
});
$("#prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    $("#chat-form").requestSubmit();
  }
});
$("#stop").addEventListener("click", () => controller && controller.abort());
$("#clear").addEventListener("click", () => {
  if (controller) controller.abort();
  history.length = 0;
  $("#log").replaceChildren();
});
$("#api-key").addEventListener("change", () => {
  $("#key-label").classList.toggle("needed", Boolean(lastSwarm && lastSwarm.auth_required) && !$("#api-key").value);
  loadModels();
});

connect();
loadModels();
