/* ServerTrack dashboard: what both pages share (data fetching with the read token, the
   error banner, colour bands, formatting and the refresh loop). No framework, no build step. */
"use strict";

const ST = (() => {
  const TOKEN_KEY = "servertrack.readToken";
  const REFRESH_MS = refreshMs(new URLSearchParams(location.search).get("refresh"));
  const BAND_LIMITS = [50, 75, 90];
  const BAND_NAMES = ["0–50", "50–75", "75–90", "90+"];
  /** A score at or above this is an anomaly: the product's one threshold, put in the page by
      the API (NAB's standard profile). */
  const ANOMALY_THRESHOLD = Number(document.body.dataset.anomalyThreshold);

  /** Milliseconds between two refreshes: 5 s, or ``?refresh=SECONDS`` (0.1 to 3600) from the
      page's address. */
  function refreshMs(asked) {
    const seconds = asked === null ? NaN : Number(asked);
    return seconds >= 0.1 && seconds <= 3600 ? Math.round(seconds * 1000) : 5000;
  }

  /** Colour band of a percentage: 0 below 50, 1 below 75, 2 below 90, 3 from 90; -1 for none. */
  function band(value) {
    if (value === null || value === undefined) return -1;
    let index = 0;
    while (index < BAND_LIMITS.length && value >= BAND_LIMITS[index]) index += 1;
    return index;
  }

  function pct(value) {
    return value === null || value === undefined ? "–" : value.toFixed(1);
  }

  function age(seconds) {
    if (seconds < 90) return `${Math.round(seconds)} s ago`;
    if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
    const hours = Math.floor(seconds / 3600);
    const minutes = Math.round((seconds - hours * 3600) / 60);
    return minutes ? `${hours} h ${minutes} min ago` : `${hours} h ago`;
  }

  /** An element with attributes and children (strings become text, never HTML). */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  /** A percentage with its band colour: the number is always shown, never the colour alone. */
  function chip(value, label) {
    const b = band(value);
    return el("span", {
      class: `chip ${b < 0 ? "none" : "b" + b}`,
      title: b < 0 ? `no ${label} sample in the last 60 minutes` : `${label} ${pct(value)} %, band ${BAND_NAMES[b]}`,
      text: pct(value),
    });
  }

  class NeedsToken extends Error {}
  class Unreachable extends Error {}
  class HttpError extends Error {
    constructor(status, body) {
      super((body && body.description) || `HTTP ${status}`);
      this.status = status;
      this.body = body;
    }
  }

  /** GET a JSON path of the API, with the session's read token when there is one.
      Resolves to {body, date}: date is the API's clock (its Date header), in epoch seconds. */
  async function getJSON(path) {
    const headers = { Accept: "application/json" };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = `Bearer ${token}`;
    let response;
    try {
      response = await fetch(path, { headers, cache: "no-store" });
    } catch (err) {
      throw new Unreachable(`the API at ${location.host} does not answer (${err.message})`);
    }
    let body = null;
    try {
      body = await response.json();
    } catch (err) {
      body = null;
    }
    if (response.status === 401) throw new NeedsToken(token ? "refused" : "missing");
    if (!response.ok) throw new HttpError(response.status, body);
    const date = Date.parse(response.headers.get("Date") || "");
    return { body, date: Number.isNaN(date) ? Date.now() / 1000 : date / 1000 };
  }

  const banner = {
    show(message) {
      const node = document.getElementById("banner");
      node.textContent = message;
      node.hidden = false;
    },
    hide() {
      document.getElementById("banner").hidden = true;
    },
  };

  /** Show the token form; resolves when a token has been entered (kept for this tab's session). */
  let asking = null;
  function askForToken(reason) {
    sessionStorage.removeItem(TOKEN_KEY);
    const form = document.getElementById("token-form");
    const message = document.getElementById("token-message");
    message.textContent = reason === "refused" ? "That token was refused; try again." : "";
    form.hidden = false;
    if (asking) return asking;
    asking = new Promise((resolve) => {
      form.addEventListener("submit", function submitted(event) {
        event.preventDefault();
        const input = document.getElementById("token-input");
        const token = input.value.trim();
        if (!token) return;
        sessionStorage.setItem(TOKEN_KEY, token);
        input.value = "";
        form.hidden = true;
        form.removeEventListener("submit", submitted);
        asking = null;
        resolve();
      });
    });
    document.getElementById("token-input").focus();
    return asking;
  }

  /** What to show when a refresh failed. */
  function report(err) {
    if (err instanceof Unreachable) {
      banner.show(`Cannot reach ServerTrack: ${err.message}. Retrying every ${REFRESH_MS / 1000} s.`);
    } else if (err instanceof HttpError && err.status === 503) {
      banner.show(`ServerTrack's backend is not answering (${err.message}). Retrying every ${REFRESH_MS / 1000} s.`);
    } else if (err instanceof HttpError) {
      banner.show(`The API refused the request: ${err.message}`);
    } else {
      banner.show(`Something went wrong: ${err.message}`);
      console.warn(err);
    }
  }

  /** Run ``refresh`` now and every REFRESH_MS after the previous run ended; paused while the tab is
      hidden, run at once when it shows again. A 401 shows the token form and waits for it. */
  function poll(refresh) {
    let timer = null;
    let running = false;
    let again = false;
    async function tick() {
      timer = null;
      if (running) {
        again = true;
        return;
      }
      running = true;
      let tokenNeeded = null;
      try {
        await refresh();
        banner.hide();
      } catch (err) {
        if (err instanceof NeedsToken) tokenNeeded = err;
        else report(err);
      }
      running = false;
      if (tokenNeeded) {
        await askForToken(tokenNeeded.message);
        return tick();
      }
      if (again) {
        again = false;
        return tick();
      }
      schedule();
    }
    function schedule() {
      if (timer === null && !document.hidden) timer = setTimeout(tick, REFRESH_MS);
    }
    document.addEventListener("visibilitychange", () => {
      if (document.hidden) {
        if (timer !== null) clearTimeout(timer);
        timer = null;
      } else if (timer === null && !running) {
        tick();
      }
    });
    tick();
    return {
      /** Refresh at once (after the one under way, if any). */
      now() {
        if (timer !== null) clearTimeout(timer);
        return tick();
      },
    };
  }

  /** Whether an anomaly score (null: none) marks an anomaly. */
  function anomalous(score) {
    return score !== null && score !== undefined && score >= ANOMALY_THRESHOLD;
  }

  /** An anomaly score as text and a flag (never the colour alone). */
  function scoreChip(score, label) {
    if (score === null || score === undefined) {
      return el("span", {
        class: "score none",
        title: `no ${label} anomaly score (warming up, or no sample)`,
        text: "–",
      });
    }
    const flagged = anomalous(score);
    return el("span", {
      class: flagged ? "score anomalous" : "score",
      title: `${label} anomaly score ${score.toFixed(4)}${flagged ? ": an anomaly" : ""} (threshold ${ANOMALY_THRESHOLD.toFixed(4)})`,
      text: `${flagged ? "⚠ " : ""}${score.toFixed(3)}`,
    });
  }

  return {
    band,
    pct,
    age,
    el,
    chip,
    scoreChip,
    anomalous,
    getJSON,
    poll,
    banner,
    BAND_NAMES,
    ANOMALY_THRESHOLD,
    REFRESH_MS,
    NeedsToken,
    HttpError,
  };
})();
