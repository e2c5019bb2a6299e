/* ServerTrack dashboard: the firing alerts (GET /alerts), on the overview (every server's) and
   on a server's page (its own). Refreshed on the pages' schedule in a loop of its own, paused
   while the tab is hidden; hidden when none fires. Its failures show in its own section, never in
   the page's banner (the page's own loop reports the API's state there, and asks for a token). */
"use strict";

(() => {
  const PREFIX = "/ui/servers/";
  const server = location.pathname.startsWith(PREFIX)
    ? decodeURIComponent(location.pathname.slice(PREFIX.length))
    : null;

  /** One firing alert: its name, its server (a link, on the overview), severity and summary. */
  function item(alert) {
    const labels = alert.labels;
    const summary = alert.annotations.summary || alert.annotations.description || "";
    return ST.el(
      "li",
      { class: `alert${labels.severity ? " sev-" + labels.severity : ""}` },
      ST.el("strong", { text: labels.alertname }),
      server === null
        ? ST.el("a", { href: PREFIX + encodeURIComponent(labels.server), text: labels.server })
        : null,
      labels.severity ? ST.el("span", { class: "severity", text: labels.severity }) : null,
      summary ? ST.el("span", { class: "summary", text: summary }) : null,
      ST.el("span", { class: "muted", text: `active since ${alert.activeAt}` }),
    );
  }

  function show(firing, note) {
    const section = document.getElementById("alerts");
    document.getElementById("alerts-list").replaceChildren(...firing.map(item));
    document.getElementById("alerts-count").textContent = String(firing.length);
    document.getElementById("alerts-note").textContent = note;
    section.hidden = firing.length === 0 && !note;
    const shown = document.body.dataset;
    shown.alertsRefreshed = String(Number(shown.alertsRefreshed || 0) + 1);
  }

  async function refresh() {
    let body;
    try {
      ({ body } = await ST.getJSON("/alerts"));
    } catch (err) {
      if (!(err instanceof ST.NeedsToken)) show([], `Alerts cannot be read now: ${err.message}`);
      return; // without the token: the page's loop asks for it, the next refresh uses it
    }
    const firing = body.data.alerts.filter(
      (alert) => alert.state === "firing" && (server === null || alert.labels.server === server),
    );
    show(firing, "");
  }

  async function tick() {
    if (!document.hidden) await refresh();
    setTimeout(tick, ST.REFRESH_MS);
  }

  tick();
})();
