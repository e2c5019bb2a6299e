/* The fleet overview: summary, heat grid of every server, and the server-side sorted,
   filtered and paged table. Refreshes every 5 s without reloading the page. */
"use strict";

(() => {
  const { el, chip, pct, age, band, scoreChip } = ST;
  const DEFAULT_ORDER = {
    status: "asc",
    name: "asc",
    cpu: "desc",
    ram: "desc",
    last_seen: "asc",
    cpu_anomaly: "desc",
    ram_anomaly: "desc",
  };
  const SPARK_W = 120;
  const SPARK_H = 24;
  const GRID_COLOURS = ["#4caf50", "#fdd835", "#fb8c00", "#e53935"];
  const NO_DATA = "#cfd8dc";
  const DOWN = "#607d8b";
  const STATUS_WORDS = { l: "live", s: "stale", d: "down" };
  const NO_CPU = 0xffff;

  const params = new URLSearchParams(location.search);
  const state = {
    sort: DEFAULT_ORDER[params.get("sort")] ? params.get("sort") : "status",
    order: null,
    q: params.get("q") || "",
    limit: 100,
    cursors: [null],
  };
  state.order = ["asc", "desc"].includes(params.get("order")) ? params.get("order") : DEFAULT_ORDER[state.sort];
  const asked = Number(params.get("limit"));
  if (Number.isInteger(asked) && asked >= 1 && asked <= 1000) state.limit = asked;

  const filter = document.getElementById("filter");
  const limitSelect = document.getElementById("limit");
  filter.value = state.q;
  if (![...limitSelect.options].some((option) => option.value === String(state.limit))) {
    limitSelect.add(new Option(String(state.limit), String(state.limit)));
  }
  limitSelect.value = String(state.limit);

  function remember() {
    const query = new URLSearchParams();
    if (state.sort !== "status") query.set("sort", state.sort);
    if (state.order !== DEFAULT_ORDER[state.sort]) query.set("order", state.order);
    if (state.q) query.set("q", state.q);
    if (state.limit !== 100) query.set("limit", String(state.limit));
    if (params.has("refresh")) query.set("refresh", params.get("refresh"));
    const search = query.toString();
    history.replaceState(null, "", search ? `/?${search}` : "/");
  }

  function fleetPath() {
    const query = new URLSearchParams({ sort: state.sort, order: state.order, limit: String(state.limit) });
    if (state.q) query.set("q", state.q);
    const cursor = state.cursors[state.cursors.length - 1];
    if (cursor) query.set("cursor", cursor);
    return `/fleet?${query}`;
  }

  // -- summary ---------------------------------------------------------------------------------
  function renderSummary(summary) {
    document.getElementById("count-live").textContent = summary.live;
    document.getElementById("count-stale").textContent = summary.stale;
    document.getElementById("count-down").textContent = summary.down;
    const minute = summary.minute;
    const start = new Date(minute.start);
    const hhmm = start.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    document.getElementById("mean-minute").textContent = minute.current ? `minute ${hhmm}` : `minute ${hhmm} (the current one has no sample yet)`;
    document.getElementById("mean-samples").textContent = `over ${minute.samples} samples`;
    document.getElementById("mean-minute").title = `mean over the ${minute.cpu_samples} cpu samples of every server in this minute`;
    document.getElementById("mean-samples").title = `mean over the ${minute.ram_samples} ram samples of every server in this minute`;
    document.getElementById("mean-cpu").replaceChildren(chip(minute.cpu, "fleet cpu"));
    document.getElementById("mean-ram").replaceChildren(chip(minute.ram, "fleet ram"));
    const list = document.getElementById("hottest");
    list.replaceChildren(
      ...summary.hottest.map((hot) =>
        el("li", {}, chip(hot.cpu, "cpu"), " ", el("a", { href: serverHref(hot.server), title: hot.server, text: hot.server }))
      )
    );
    if (!summary.hottest.length) list.replaceChildren(el("li", { class: "muted", text: "no live server" }));
  }

  function serverHref(name) {
    return `/ui/servers/${encodeURIComponent(name)}`;
  }

  // -- table -------------------------------------------------------------------------------------
  function sparkline(points) {
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("width", SPARK_W);
    svg.setAttribute("height", SPARK_H);
    svg.setAttribute("viewBox", `0 0 ${SPARK_W} ${SPARK_H}`);
    svg.setAttribute("class", "spark");
    svg.setAttribute("role", "img");
    const step = SPARK_W / (points.length - 1 || 1);
    let d = "";
    let pen = false;
    let count = 0;
    let low = Infinity;
    let high = -Infinity;
    points.forEach((value, i) => {
      if (value === null) {
        pen = false;
        return;
      }
      const x = (i * step).toFixed(1);
      const y = (SPARK_H - 1 - (value / 100) * (SPARK_H - 2)).toFixed(1);
      d += `${pen ? "L" : "M"}${x} ${y}`;
      if (!pen && (i === points.length - 1 || points[i + 1] === null)) d += `h1`; // a lone minute
      pen = true;
      count += 1;
      low = Math.min(low, value);
      high = Math.max(high, value);
    });
    const text = count
      ? `cpu over the last 60 minutes: ${count} minutes with data, from ${pct(low)} to ${pct(high)} %`
      : "no cpu sample in the last 60 minutes";
    svg.setAttribute("aria-label", text);
    const title = document.createElementNS(ns, "title");
    title.textContent = text;
    const line = document.createElementNS(ns, "path");
    line.setAttribute("d", d);
    line.setAttribute("class", `spark-line b${Math.max(band(high === -Infinity ? null : high), 0)}`);
    svg.append(title, line);
    return svg;
  }

  function renderRows(page) {
    const body = document.getElementById("rows");
    const rows = page.rows.map((row) =>
      el(
        "tr",
        { "data-server": row.server, "data-status": row.status },
        el("td", { class: "name" }, el("a", { href: serverHref(row.server), text: row.server })),
        el("td", { class: "num cpu" }, chip(row.cpu, "cpu")),
        el("td", { class: "num ram" }, chip(row.ram, "ram")),
        el("td", { class: "spark-cell" }, sparkline(row.sparkline)),
        el("td", { class: "seen", title: row.last_seen, text: age(row.age_seconds) }),
        el("td", { class: "status" }, el("span", { class: `status-${row.status}`, text: row.status })),
        el("td", { class: "num cpu-anomaly" }, scoreChip(row.cpu_anomaly, "cpu")),
        el("td", { class: "num ram-anomaly" }, scoreChip(row.ram_anomaly, "ram"))
      )
    );
    body.replaceChildren(...rows);
    const empty = document.getElementById("empty");
    empty.hidden = page.rows.length > 0;
    if (!page.rows.length) {
      empty.textContent = page.q
        ? `No server name contains “${page.q}”.`
        : page.summary.servers
          ? "No rows on this page."
          : "No server has reported yet: start an agent, or POST a load to /servers/{name}/loads.";
    }
    const first = page.total ? Number(state.cursors[state.cursors.length - 1] || 0) + 1 : 0;
    const last = first ? first + page.rows.length - 1 : 0;
    document.getElementById("range").textContent = `${first}–${last} of ${page.total}`;
    document.getElementById("prev").disabled = state.cursors.length < 2;
    const next = document.getElementById("next");
    next.disabled = !page.next_cursor;
    next.dataset.cursor = page.next_cursor || "";
    for (const th of document.querySelectorAll("#fleet th[data-sort]")) {
      const sorted = th.dataset.sort === page.sort;
      th.setAttribute("aria-sort", sorted ? (page.order === "asc" ? "ascending" : "descending") : "none");
    }
  }

  // -- heat grid ---------------------------------------------------------------------------------
  const canvas = document.getElementById("grid");
  const tip = document.getElementById("grid-tip");
  let grid = null; // {servers, cpu, status, cell, columns}

  function gridLayout(count, width) {
    const area = Math.max(width * 320, 1);
    const cell = Math.max(4, Math.min(40, Math.floor(Math.sqrt(area / Math.max(count, 1)))));
    const columns = Math.max(1, Math.floor(width / cell));
    return { cell, columns, rows: Math.ceil(count / columns) };
  }

  function cellText(data, i) {
    const cpu = data.cpu[i];
    return `${data.servers[i]}: cpu ${cpu === null ? "no data" : pct(cpu) + " %"}, ${STATUS_WORDS[data.status[i]]}`;
  }

  function drawGrid(data) {
    const width = document.getElementById("grid-wrap").clientWidth || 800;
    const count = data.servers.length;
    const { cell, columns, rows } = gridLayout(count, width);
    const ratio = window.devicePixelRatio || 1;
    const height = Math.max(rows * cell, cell);
    canvas.width = Math.round(columns * cell * ratio);
    canvas.height = Math.round(height * ratio);
    canvas.style.width = `${columns * cell}px`;
    canvas.style.height = `${height}px`;
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, columns * cell, height);
    const gap = cell >= 8 ? 1 : 0;
    const labelled = cell >= 30;
    ctx.font = "10px system-ui, sans-serif";
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    for (let i = 0; i < count; i += 1) {
      const x = (i % columns) * cell;
      const y = Math.floor(i / columns) * cell;
      const status = data.status[i];
      const b = band(data.cpu[i]);
      ctx.globalAlpha = status === "s" ? 0.45 : 1;
      ctx.fillStyle = status === "d" ? DOWN : b < 0 ? NO_DATA : GRID_COLOURS[b];
      ctx.fillRect(x, y, cell - gap, cell - gap);
      if (labelled) {
        ctx.globalAlpha = 1;
        ctx.fillStyle = status === "d" ? "#fff" : "#111";
        ctx.fillText(status === "d" ? "down" : pct(data.cpu[i]), x + (cell - gap) / 2, y + (cell - gap) / 2);
      }
    }
    ctx.globalAlpha = 1;
    grid = { ...data, cell, columns };
    const hot = data.cpu.filter((v) => v !== null && v >= 90).length;
    canvas.setAttribute(
      "aria-label",
      `Heat grid of ${count} servers by current cpu, ${hot} at 90 % or more; the list below names each one.`
    );
    // The text alternative: one item per cell, the same text as the tooltip.
    const items = [];
    for (let i = 0; i < count; i += 1) items.push(`<li>${escapeHtml(cellText(data, i))}</li>`);
    document.getElementById("grid-list").innerHTML = items.join("");
  }

  function escapeHtml(text) {
    return text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  }

  function cellAt(event) {
    if (!grid) return -1;
    const box = canvas.getBoundingClientRect();
    const col = Math.floor((event.clientX - box.left) / grid.cell);
    const row = Math.floor((event.clientY - box.top) / grid.cell);
    if (col < 0 || col >= grid.columns || row < 0) return -1;
    const i = row * grid.columns + col;
    return i < grid.servers.length ? i : -1;
  }

  canvas.addEventListener("mousemove", (event) => {
    const i = cellAt(event);
    if (i < 0) {
      tip.hidden = true;
      canvas.classList.remove("pointing");
      return;
    }
    tip.textContent = cellText(grid, i);
    const wrap = document.getElementById("grid-wrap").getBoundingClientRect();
    tip.style.left = `${event.clientX - wrap.left + 12}px`;
    tip.style.top = `${event.clientY - wrap.top + 12}px`;
    tip.hidden = false;
    canvas.classList.add("pointing");
  });
  canvas.addEventListener("mouseleave", () => {
    tip.hidden = true;
  });
  canvas.addEventListener("click", (event) => {
    const i = cellAt(event);
    if (i >= 0) location.href = serverHref(grid.servers[i]);
  });

  // -- grid data -------------------------------------------------------------------------------
  // /fleet/grid sends the names only when they changed since the version we send back; cpu
  // comes as base64 of little-endian uint16 tenths of a percent (65535: no value).
  let names = null; // {version, servers}

  function gridPath() {
    return names ? `/fleet/grid?names=${encodeURIComponent(names.version)}` : "/fleet/grid";
  }

  /** {servers, cpu, status} from a grid answer, or null when the names we hold do not fit it. */
  function decodeGrid(body) {
    if (body.servers) names = { version: body.names_version, servers: body.servers };
    if (!names || names.version !== body.names_version || names.servers.length !== body.count) {
      names = null;
      return null;
    }
    const raw = atob(body.cpu);
    const bytes = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i += 1) bytes[i] = raw.charCodeAt(i);
    const view = new DataView(bytes.buffer);
    const cpu = new Array(body.count);
    for (let i = 0; i < body.count; i += 1) {
      const code = view.getUint16(2 * i, true);
      cpu[i] = code === NO_CPU ? null : code / 10;
    }
    return { servers: names.servers, cpu, status: body.status };
  }

  async function fetchGrid() {
    const answer = await ST.getJSON(gridPath());
    return decodeGrid(answer.body) || decodeGrid((await ST.getJSON("/fleet/grid")).body);
  }

  // -- refresh -----------------------------------------------------------------------------------
  let lastGrid = null;
  async function refresh() {
    const [page, cells] = await Promise.all([ST.getJSON(fleetPath()), fetchGrid()]);
    renderSummary(page.body.summary);
    renderRows(page.body);
    if (cells) {
      lastGrid = cells;
      drawGrid(lastGrid);
    }
    const at = new Date(page.date * 1000).toLocaleTimeString();
    document.getElementById("updated").textContent = `updated ${at}`;
    document.body.dataset.refreshed = String((Number(document.body.dataset.refreshed) || 0) + 1);
  }

  const poller = ST.poll(refresh);

  function changed() {
    state.cursors = [null];
    remember();
    poller.now();
  }

  for (const th of document.querySelectorAll("#fleet th[data-sort]")) {
    th.querySelector("button").addEventListener("click", () => {
      const column = th.dataset.sort;
      if (state.sort === column) state.order = state.order === "asc" ? "desc" : "asc";
      else {
        state.sort = column;
        state.order = DEFAULT_ORDER[column];
      }
      changed();
    });
  }
  let typing = null;
  filter.addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => {
      state.q = filter.value.trim();
      changed();
    }, 200);
  });
  limitSelect.addEventListener("change", () => {
    state.limit = Number(limitSelect.value);
    changed();
  });
  document.getElementById("next").addEventListener("click", (event) => {
    const cursor = event.currentTarget.dataset.cursor;
    if (!cursor) return;
    state.cursors.push(cursor);
    poller.now();
  });
  document.getElementById("prev").addEventListener("click", () => {
    if (state.cursors.length > 1) state.cursors.pop();
    poller.now();
  });
  window.addEventListener("resize", () => {
    if (lastGrid) drawGrid(lastGrid);
  });
})();
