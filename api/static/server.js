/* One server's page: health, and its 60-minute and 24-hour charts (uPlot) with cpu and ram
   means and their min–max bands. Hovering a chart shows that bucket's values and sample count. */
"use strict";

(() => {
  const { el, chip, pct, age, anomalous } = ST;
  const PREFIX = "/ui/servers/";
  const name = decodeURIComponent(location.pathname.slice(PREFIX.length));
  const STALE_AFTER = 120;
  const DOWN_AFTER = 600;
  const CPU = "#1565c0";
  const RAM = "#8e24aa";
  const ANOMALY = "#d50000";
  document.title = `ServerTrack · ${name}`;
  document.getElementById("server-name").textContent = name;

  /** Series columns for uPlot over every bucket of the window (null where a bucket is empty). */
  function columns(buckets, width, count, end) {
    const first = end - (count - 1) * width;
    const byStart = new Map(buckets.map((b) => [Date.parse(b.start) / 1000, b]));
    const data = [[], [], [], [], [], [], [], [], []];
    const rows = [];
    for (let t = first; t <= end; t += width) {
      const b = byStart.get(t) || null;
      rows.push(b);
      data[0].push(t);
      data[1].push(b ? b.cpu : null);
      data[2].push(b ? b.cpu_min : null);
      data[3].push(b ? b.cpu_max : null);
      data[4].push(b ? b.ram : null);
      data[5].push(b ? b.ram_min : null);
      data[6].push(b ? b.ram_max : null);
      // Anomalous minutes: a marker on the mean's line (hour buckets carry no score).
      data[7].push(b && anomalous(b.cpu_anomaly) ? b.cpu : null);
      data[8].push(b && anomalous(b.ram_anomaly) ? b.ram : null);
    }
    return { data, rows };
  }

  function describe(bucket, start, width) {
    const when = new Date(start * 1000);
    const label =
      width === 60
        ? when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
        : when.toLocaleString([], { weekday: "short", hour: "2-digit", minute: "2-digit" });
    if (!bucket) return `${label}: no sample`;
    const metric = (key) =>
      bucket[key] === null
        ? `${key.toUpperCase()} no sample`
        : `${key.toUpperCase()} ${pct(bucket[key])} % (min ${pct(bucket[key + "_min"])}, max ${pct(bucket[key + "_max"])}, ${bucket[key + "_samples"]} samples)`;
    const score = (key) => {
      const value = bucket[`${key}_anomaly`];
      if (value === null || value === undefined) return "";
      return ` · ${key.toUpperCase()} anomaly ${value.toFixed(3)}${anomalous(value) ? " ⚠ anomalous" : ""}`;
    };
    return `${label} · ${metric("cpu")} · ${metric("ram")} · ${bucket.samples} samples${score("cpu")}${score("ram")}`;
  }

  function clock(start) {
    return new Date(start * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  /** The anomalous minutes in words (the markers' text alternative). */
  function listAnomalies(buckets) {
    const found = [];
    for (const b of buckets) {
      for (const key of ["cpu", "ram"]) {
        const value = b[`${key}_anomaly`];
        if (anomalous(value)) found.push(`${clock(Date.parse(b.start) / 1000)} ${key.toUpperCase()} ${value.toFixed(3)}`);
      }
    }
    const node = document.getElementById("anomalies-minutes");
    node.dataset.count = String(found.length);
    node.textContent = found.length
      ? `Anomalous minutes (score ≥ ${ST.ANOMALY_THRESHOLD.toFixed(4)}): ${found.join(", ")}`
      : "No anomalous minute in the last 60 minutes.";
  }

  class Chart {
    constructor(key, width, count) {
      this.key = key;
      this.width = width;
      this.count = count;
      this.box = document.getElementById(`chart-${key}`);
      this.readout = document.getElementById(`readout-${key}`);
      this.plot = null;
      this.rows = [];
    }

    options() {
      const band = (colour) => ({ stroke: colour, width: 0, points: { show: false } });
      const marker = () => ({
        stroke: ANOMALY,
        width: 0,
        paths: () => null,
        points: { show: true, size: 11, width: 2, stroke: ANOMALY, fill: ANOMALY },
      });
      return {
        width: Math.max(this.box.clientWidth, 320),
        height: 240,
        legend: { show: false },
        cursor: { drag: { x: false, y: false } },
        scales: { x: { time: true }, y: { range: [0, 100] } },
        axes: [{}, { values: (u, ticks) => ticks.map((v) => `${v} %`), size: 52 }],
        series: [
          {},
          { label: "CPU", stroke: CPU, width: 2, spanGaps: false },
          { label: "CPU min", ...band(CPU) },
          { label: "CPU max", ...band(CPU) },
          { label: "RAM", stroke: RAM, width: 2, spanGaps: false },
          { label: "RAM min", ...band(RAM) },
          { label: "RAM max", ...band(RAM) },
          { label: "CPU anomaly", ...marker() },
          { label: "RAM anomaly", ...marker() },
        ],
        bands: [
          { series: [3, 2], fill: "rgba(21, 101, 192, 0.15)" },
          { series: [6, 5], fill: "rgba(142, 36, 170, 0.12)" },
        ],
        hooks: { setCursor: [(u) => this.hover(u.cursor.idx)] },
      };
    }

    hover(index) {
      const shown = index === null || index === undefined ? this.latest() : index;
      if (shown < 0) {
        this.readout.textContent = "";
        return;
      }
      this.readout.textContent = describe(this.rows[shown], this.data[0][shown], this.width);
    }

    latest() {
      for (let i = this.rows.length - 1; i >= 0; i -= 1) if (this.rows[i]) return i;
      return -1;
    }

    update(buckets, now) {
      const end = Math.floor(now / this.width) * this.width;
      const newest = buckets.length ? Date.parse(buckets[buckets.length - 1].start) / 1000 : end;
      const { data, rows } = columns(buckets, this.width, this.count, Math.max(end, newest));
      this.rows = rows;
      this.data = data;
      if (!this.plot) this.plot = new uPlot(this.options(), data, this.box);
      else this.plot.setData(data);
      this.hover(null);
    }

    resize() {
      if (this.plot) this.plot.setSize({ width: Math.max(this.box.clientWidth, 320), height: 240 });
    }
  }

  const minutes = new Chart("minutes", 60, 60);
  const hours = new Chart("hours", 3600, 24);
  window.addEventListener("resize", () => {
    minutes.resize();
    hours.resize();
  });

  function newest(buckets, key) {
    for (let i = buckets.length - 1; i >= 0; i -= 1) if (buckets[i][key] !== null) return buckets[i][key];
    return null;
  }

  function showEmpty(text) {
    document.getElementById("details").hidden = true;
    document.getElementById("server-status").replaceChildren();
    document.getElementById("empty-text").textContent = text;
    document.getElementById("empty").hidden = false;
  }

  async function refresh() {
    let answer;
    try {
      answer = await ST.getJSON(`/servers/${encodeURIComponent(name)}/loads`);
    } catch (err) {
      if (err instanceof ST.HttpError && (err.status === 404 || err.status === 400)) {
        showEmpty(
          err.status === 404
            ? `No data for ${name} in the last 24 hours: it has not reported, or it was forgotten after 24 hours of silence.`
            : `“${name}” is not a valid server name.`
        );
        return;
      }
      throw err;
    }
    const view = answer.body;
    const now = answer.date;
    document.getElementById("empty").hidden = true;
    document.getElementById("details").hidden = false;
    const seen = Date.parse(view.last_seen) / 1000;
    const ago = Math.max(now - seen, 0);
    const status = ago < STALE_AFTER ? "live" : ago < DOWN_AFTER ? "stale" : "down";
    document.getElementById("server-status").replaceChildren(el("span", { class: `status-${status}`, text: status }));
    document.getElementById("h-seen").replaceChildren(el("span", { title: view.last_seen, text: age(ago) }));
    document.getElementById("h-cpu").replaceChildren(chip(newest(view.minutes, "cpu"), "cpu"));
    document.getElementById("h-ram").replaceChildren(chip(newest(view.minutes, "ram"), "ram"));
    const health = view.health;
    document.getElementById("h-lost").textContent = health.lost;
    document.getElementById("h-duplicates").textContent = health.duplicates;
    document.getElementById("h-rejected").textContent = health.rejected;
    document.getElementById("h-skew").textContent =
      health.skew_seconds === null ? "unknown (no agent samples)" : `${health.skew_seconds.toFixed(3)} s`;
    document.getElementById("h-ip").textContent = health.ip.length ? health.ip.join(", ") : "unknown";
    document.getElementById("empty-minutes").hidden = view.minutes.length > 0;
    minutes.update(view.minutes, now);
    listAnomalies(view.minutes);
    hours.update(view.hours, now);
    document.getElementById("updated").textContent = `updated ${new Date(now * 1000).toLocaleTimeString()}`;
    document.body.dataset.refreshed = String((Number(document.body.dataset.refreshed) || 0) + 1);
  }

  ST.poll(refresh);
})();
