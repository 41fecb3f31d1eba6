// The operator console page: status and positions pushed by server-sent events (no reloads),
// charts by uPlot, operator actions with the token in the X-Operator-Token header.
// Data from the broker is shown with textContent only (never parsed as HTML).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { rows: new Map(), sortKey: "position_id", asc: true, filter: "", exits: null };
const NUMERIC = new Set(["quantity", "entry_price", "last_price", "price_age_s", "pnl",
  "stop_price", "stop_distance_pct"]);
const COLUMNS = ["position_id", "instrument", "status", "side", "quantity", "entry_price",
  "last_price", "price_age_s", "pnl", "stop_price", "stop_distance_pct", "flags"];

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

function fmtAge(s) {
  if (s === null || s === undefined) return "never";
  return s < 60 ? `${s.toFixed(1)}s` : `${Math.floor(s / 60)}m${Math.round(s % 60)}s`;
}

function cellText(row, key) {
  switch (key) {
    case "instrument": return `${row.segment}:${row.security_id}`;
    case "price_age_s": return fmtAge(row.price_age_s);
    case "stop_distance_pct": return row.stop_distance_pct === null ? "–" : `${row.stop_distance_pct.toFixed(2)}%`;
    case "flags": return row.flags.join(" ");
    default: return row[key] === null || row[key] === undefined ? "–" : String(row[key]);
  }
}

// Status ---------------------------------------------------------------------------------
function showStatus(status) {
  const trading = $("trading");
  trading.textContent = status.trading_state + (status.kill_switch ? " · KILL SWITCH" : "");
  trading.className = `badge ${status.trading_state}`;
  $("mode").textContent = status.mode || "";
  const gw = status.gateway || {};
  $("gateway").textContent = `${gw.kind || "?"} ${gw.state || ""}`;
  $("token").textContent = gw.token_expires_at
    ? new Date(gw.token_expires_at).toLocaleString("en-IN", { timeZone: "Asia/Kolkata" }) : "n/a";
  const net = status.day_net;
  const daynet = $("daynet");
  daynet.textContent = net === null ? "–" : `₹${net}`;
  daynet.className = net === null ? "" : (Number(net) < 0 ? "neg" : "pos");
  $("age").textContent = status.max_price_age_s === null ? "–" : fmtAge(status.max_price_age_s);
  const books = $("books");
  books.textContent = status.books || "";
  books.className = !status.books || status.books === "books: agree" ? "" : "neg";
  const counts = status.positions || {};
  $("n-active").textContent = counts.ACTIVE || 0;
  $("n-exiting").textContent = counts.EXITING || 0;
  $("n-exited").textContent = counts.EXITED || 0;
  $("n-unprotected").textContent = (status.unprotected || []).length;
  $("n-quarantined").textContent = (status.quarantined || []).length;
  $("n-restarts").textContent = (status.metrics || {}).actor_restarts || 0;
  showActions(status.operator_actions);
}

function showActions(actions) {
  if (!actions) return;
  const list = $("actions");
  list.replaceChildren();
  if (!actions.length) list.append(el("li", null, "none yet"));
  for (const a of actions.slice().reverse()) {
    const when = new Date(a.at).toLocaleTimeString("en-IN", { timeZone: "Asia/Kolkata" });
    list.append(el("li", a.ok ? null : "bad",
      `${when} ${a.operator}@${a.address}: ${a.action}${a.target ? " " + a.target : ""} — ${a.outcome}`));
  }
}

// Positions table ------------------------------------------------------------------------
function makeRow(row) {
  const tr = el("tr");
  tr.dataset.id = row.position_id;
  for (const key of COLUMNS) {
    const td = el("td", `c-${key}${NUMERIC.has(key) ? " num" : ""}`);
    tr.append(td);
  }
  const act = el("td");
  const close = el("button", "small danger close", "Close");
  close.addEventListener("click", (event) => { event.stopPropagation(); closePosition(row.position_id); });
  act.append(close);
  tr.append(act);
  tr.addEventListener("click", () => openStory(tr.dataset.id));
  return tr;
}

function setClass(node, name) {
  if (node.className !== name) node.className = name;
}

function fillRow(tr, row) {
  COLUMNS.forEach((key, i) => {
    const td = tr.children[i];
    if (key === "flags") {
      const text = row.flags.join(" ");
      if (td.dataset.v !== text) {
        td.dataset.v = text;
        td.replaceChildren(...row.flags.map((f) => el("span", `flag ${f}`, f)));
      }
      return;
    }
    const text = cellText(row, key);
    const had = td.textContent;
    if (had !== text) td.textContent = text;
    // A price that moved since the last push is tinted until the next one (a static tint: an
    // animation would repaint the table many times a second); not a row just scrolled in.
    if (key === "last_price" && td.classList.contains("moved") !== (had !== text && had !== "")) {
      td.classList.toggle("moved");
    }
    if (key === "pnl") setClass(td, `c-pnl num ${Number(row.pnl) < 0 ? "neg" : "pos"}`);
    if (key === "status") setClass(td, `c-status status-${row.status}`);
  });
}

function sortValue(row, key) {
  if (key === "instrument") return `${row.segment}:${row.security_id}`;
  const v = row[key];
  if (NUMERIC.has(key)) return v === null ? -Infinity : Number(v);
  return Array.isArray(v) ? v.join(" ") : (v || "");
}

// Only the rows in view (and a few either side) are in the document: a push of 1,000
// positions then costs the browser the layout and style of a screenful, not of the whole
// table (the page shares the machine with the price path; issue 18's load check). Spacer
// rows stand in for the rest, so the scroll bar is that of the whole table.
const OVERSCAN = 12;

function spacer(height) {
  const tr = el("tr", "spacer");
  tr.setAttribute("aria-hidden", "true");
  const td = el("td");
  td.colSpan = COLUMNS.length + 1;
  td.style.height = `${height}px`;
  tr.append(td);
  return tr;
}

function setHeight(tr, height) {
  if (tr.dataset.h !== String(height)) {
    tr.dataset.h = String(height);
    tr.firstChild.style.height = `${height}px`;
  }
}

function showPositions(rows) {
  const filter = state.filter.toLowerCase();
  const shown = rows.filter((r) => !filter || [r.position_id, r.security_id, r.status, r.side,
    ...r.flags].join(" ").toLowerCase().includes(filter));
  const key = state.sortKey;
  shown.sort((a, b) => {
    const x = sortValue(a, key), y = sortValue(b, key);
    return (x < y ? -1 : x > y ? 1 : 0) * (state.asc ? 1 : -1);
  });
  state.shown = shown;
  state.lastRows = rows;
  renderRows(true);
  $("positions").dataset.rows = shown.length;
  $("empty").hidden = shown.length > 0;
  $("n-rows").textContent = `(${shown.length}${shown.length !== rows.length ? ` of ${rows.length}` : ""})`;
}

// pushed: the rows' values are new (a push, a sort, a filter), else only the view moved.
function renderRows(pushed) {
  const shown = state.shown || [];
  const wrap = document.querySelector(".table-wrap");
  const body = document.querySelector("#positions tbody");
  const height = state.rowHeight || 33;
  const first = Math.max(0, Math.floor(wrap.scrollTop / height) - OVERSCAN);
  const last = Math.min(shown.length,
    first + Math.ceil(Math.max(wrap.clientHeight, 600) / height) + 2 * OVERSCAN);
  const order = [];
  const seen = new Set();
  for (let i = first; i < last; i++) {
    const row = shown[i];
    seen.add(row.position_id);
    let tr = state.rows.get(row.position_id);
    if (!tr) {
      tr = makeRow(row);
      state.rows.set(row.position_id, tr);
      fillRow(tr, row);
    } else if (pushed) {
      fillRow(tr, row);
    }
    order.push(tr);
  }
  for (const [id, tr] of state.rows) if (!seen.has(id)) { tr.remove(); state.rows.delete(id); }
  const above = first * height, below = (shown.length - last) * height;
  state.top = state.top || spacer(0);
  state.bottom = state.bottom || spacer(0);
  setHeight(state.top, above);
  setHeight(state.bottom, below);
  const wanted = [...(above ? [state.top] : []), ...order, ...(below ? [state.bottom] : [])];
  const current = body.children;
  if (current.length !== wanted.length || wanted.some((tr, i) => current[i] !== tr)) {
    body.replaceChildren(...wanted);  // moves rows into order without rebuilding them
  }
  if (order.length && !state.rowHeight) {
    const measured = order[0].getBoundingClientRect().height;
    if (measured > 0) { state.rowHeight = measured; if (measured !== height) renderRows(false); }
  }
}

document.querySelector(".table-wrap").addEventListener("scroll", () => {
  if (state.scrolling) return;
  state.scrolling = true;
  requestAnimationFrame(() => { state.scrolling = false; renderRows(false); });
}, { passive: true });

document.querySelectorAll("#positions th[data-key]").forEach((th) => {
  th.addEventListener("click", () => {
    const key = th.dataset.key;
    state.asc = state.sortKey === key ? !state.asc : true;
    state.sortKey = key;
    document.querySelectorAll("#positions th").forEach((h) => h.classList.remove("sorted", "asc"));
    th.classList.add("sorted");
    if (state.asc) th.classList.add("asc");
    if (state.lastRows) showPositions(state.lastRows);
  });
});
$("filter").addEventListener("input", (e) => { state.filter = e.target.value; if (state.lastRows) showPositions(state.lastRows); });

// Charts -----------------------------------------------------------------------------------
const REASON_COLOURS = { STOP_LOSS: "#e5534b", TAKE_PROFIT: "#3fb37f", TRAILING_STOP: "#4c8dff",
  KILL_SWITCH: "#ff7b72", SESSION_END: "#d29922", TIME_STOP: "#a371f7", TIME_EXIT: "#bc8cff",
  MANUAL: "#dbe2ea", BROKER_EXIT: "#8394a8" };
let pnlPlot = null, reasonPlot = null;
const axis = { stroke: "#8394a8", grid: { stroke: "#253041" }, ticks: { stroke: "#253041" } };

function chartWidth(id) { return Math.max(260, $(id).clientWidth); }

function showExits(exits) {
  state.exits = exits;
  const pts = exits.points;
  const xs = pts.map((p) => p.t), ys = pts.map((p) => Number(p.cumulative));
  const data = [xs, ys];
  if (!pnlPlot) {
    pnlPlot = new uPlot({
      width: chartWidth("pnl-chart"), height: 220, legend: { show: false },
      scales: { x: { time: true, range: (u, min, max) => (min === max || min === null
        ? [(min || 0) - 600, (max || 0) + 600] : [min, max]) } }, tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), "Asia/Kolkata"),
      axes: [axis, { ...axis, size: 60 }],
      series: [{}, { label: "cumulative net ₹", stroke: "#4c8dff", width: 2,
        fill: "rgba(76,141,255,.08)",
        points: { show: true, size: 7, fill: (u, si) => "#4c8dff" } }],
      hooks: { draw: [drawExitMarks] },
    }, data, $("pnl-chart"));
  } else {
    pnlPlot.setData(data);
  }
  const reasons = Object.entries(exits.exits_by_reason || {}).sort((a, b) => b[1] - a[1]);
  const rx = reasons.map((_, i) => i), ry = reasons.map((r) => r[1]);
  const names = reasons.map((r) => r[0]).join(",");
  $("reason-chart").dataset.reasons = reasons.map((r) => `${r[0]}=${r[1]}`).join(",");
  if (reasonPlot && names === state.reasonNames) {
    // The same reasons in the same order: new counts only. (Making the chart anew measured
    // the page's layout at every exit: the dashboard's costliest script on a busy book.)
    reasonPlot.setData([rx, ry]);
    return;
  }
  if (reasonPlot) reasonPlot.destroy();
  state.reasonNames = names;
  reasonPlot = new uPlot({
    width: chartWidth("reason-chart"), height: 170, legend: { show: false },
    scales: { x: { time: false, range: [-0.6, Math.max(reasons.length - 0.4, 0.4)] } },
    axes: [{ ...axis, values: (u, ticks) => ticks.map((t) => (reasons[t]
      ? reasons[t][0].replace("_", "\n") : "")), splits: () => rx, font: "10px system-ui",
      size: 44 }, { ...axis, size: 40 }],
    series: [{}, { label: "exits", stroke: "#4c8dff", fill: "rgba(76,141,255,.5)",
      paths: uPlot.paths.bars({ size: [0.6, 60] }), points: { show: false } }],
  }, [rx, ry], $("reason-chart"));
}

function drawExitMarks(u) {
  // Colour each exit's point by its reason (the series line is drawn by uPlot itself).
  const pts = (state.exits || {}).points || [];
  const ctx = u.ctx;
  ctx.save();
  for (const p of pts) {
    const x = u.valToPos(p.t, "x", true), y = u.valToPos(Number(p.cumulative), "y", true);
    ctx.beginPath();
    ctx.fillStyle = REASON_COLOURS[p.reason] || "#dbe2ea";
    ctx.arc(x, y, 4 * devicePixelRatio, 0, 2 * Math.PI);
    ctx.fill();
  }
  ctx.restore();
}

window.addEventListener("resize", () => {
  if (pnlPlot) pnlPlot.setSize({ width: chartWidth("pnl-chart"), height: 220 });
  state.reasonNames = null;  // made anew at the new width
  if (state.exits) showExits(state.exits);
});

// Story --------------------------------------------------------------------------------------
async function openStory(id) {
  const drawer = $("story");
  $("story-id").textContent = id;
  const body = $("story-body");
  body.replaceChildren(el("p", "muted", "loading…"));
  drawer.hidden = false;
  const answer = await fetch(`/api/positions/${encodeURIComponent(id)}/story`);
  if (!answer.ok) { body.replaceChildren(el("p", "neg", `no story: ${answer.status}`)); return; }
  const story = await answer.json();
  const p = story.position;
  body.replaceChildren(
    el("p", null, `${p.side} ${p.quantity} ${p.segment}:${p.security_id} · ${p.status}` +
      ` · entry ${p.entry_price ?? "–"} · exit ${p.exit_price ?? "–"} ${p.exit_reason ?? ""}`),
    el("h3", null, "Trace"),
    el("pre", "trace", story.trace.length ? story.trace.join("\n") : "no trace records in memory"),
    el("h3", null, "Fills"), table(story.fills, ["order_no", "role", "qty", "price", "at"]),
    el("h3", null, "Exit attempts"),
    table(story.exit_attempts, ["attempt", "client_id", "reason", "quantity", "requested_at", "order_no", "outcome"]));
}

function istTime(iso) {
  return new Date(iso).toLocaleString("en-IN", { timeZone: "Asia/Kolkata", hour12: false }) + " IST";
}

function table(items, keys) {
  if (!items.length) return el("p", "muted", "none");
  const t = el("table");
  const head = el("tr");
  keys.forEach((k) => head.append(el("th", null, k)));
  t.append(head);
  for (const item of items) {
    const tr = el("tr");
    keys.forEach((k) => tr.append(el("td", null, k.endsWith("at") && item[k]
      ? istTime(item[k]) : (item[k] ?? "–"))));
    t.append(tr);
  }
  return t;
}
$("story-close").addEventListener("click", () => { $("story").hidden = true; });
document.addEventListener("keydown", (e) => { if (e.key === "Escape") $("story").hidden = true; });

// Operator actions ---------------------------------------------------------------------------
const tokenInput = $("op-token");
tokenInput.value = sessionStorage.getItem("operator-token") || "";
tokenInput.addEventListener("change", () => sessionStorage.setItem("operator-token", tokenInput.value));
const nameInput = $("op-name");
nameInput.value = localStorage.getItem("operator-name") || "";
nameInput.addEventListener("change", () => localStorage.setItem("operator-name", nameInput.value));

function toast(text, good) {
  const t = $("toast");
  t.textContent = text;
  t.className = good ? "good" : "bad";
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, 4000);
}

async function act(path, question) {
  if (!window.confirm(question)) return;
  const answer = await fetch(path, { method: "POST",
    headers: { "X-Operator-Token": tokenInput.value, "X-Operator": nameInput.value.replace(/[^A-Za-z0-9 ._@-]/g, "").slice(0, 40) || "operator" } });
  let body = {};
  try { body = await answer.json(); } catch (e) { /* not JSON: the status says enough */ }
  if (answer.ok) toast(body.detail || "done", true);
  else toast(`${answer.status}: ${body.detail || answer.statusText}`, false);
}

function closePosition(id) {
  act(`/api/positions/${encodeURIComponent(id)}/close`, `Close position ${id} now (MANUAL)?`);
}
$("btn-flatten").addEventListener("click", () => act("/api/flatten", "Close EVERY open position now?"));
$("btn-halt").addEventListener("click", () => act("/api/halt", "Halt trading? Positions that open will be closed at once."));
$("btn-resume").addEventListener("click", () => act("/api/resume", "Resume trading?"));
$("btn-reset").addEventListener("click", () => act("/api/kill-switch/reset", "Reset the kill switch and resume trading?"));

// Push stream --------------------------------------------------------------------------------
function connect() {
  const source = new EventSource("/api/stream");
  source.addEventListener("open", () => $("live").classList.add("on"));
  source.addEventListener("error", () => $("live").classList.remove("on"));
  source.addEventListener("snapshot", (e) => {
    const snap = JSON.parse(e.data);
    showStatus(snap.status);
    showPositions(snap.positions);
    document.body.dataset.at = snap.at;
  });
  source.addEventListener("exits", (e) => showExits(JSON.parse(e.data)));
}
fetch("/api/status").then((r) => r.json()).then(showStatus).catch(() => {});
connect();
