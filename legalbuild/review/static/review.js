// legalbuild review: plain JavaScript, no library, no build step. The server renders every piece
// of HTML; this file uploads, polls the progress, swaps in the panes the server renders, filters
// findings, links findings and clauses, and posts the reviewer's decisions.
"use strict";

function api(path, options) {
  options = options || {};
  options.headers = Object.assign({ "X-Legalbuild": "1" }, options.headers || {});
  options.credentials = "same-origin";
  return fetch(path, options);
}

async function errorText(response) {
  const text = await response.text();
  try {
    const data = JSON.parse(text);
    const message = data.error || data.detail || text;
    return data.hint ? message + " (" + data.hint + ")" : message;
  } catch (e) {
    return text || response.status + " " + response.statusText;
  }
}

function show(element, text) {
  element.textContent = text;
  element.hidden = !text;
}

// ------------------------------------------------------------------------------ start page
function setUpUpload(form) {
  const error = document.getElementById("upload-error");
  const status = document.getElementById("upload-status");
  const button = document.getElementById("upload-button");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const file = document.getElementById("file").files[0];
    if (!file) return;
    show(error, "");
    show(status, "Uploading " + file.name + "…");
    button.disabled = true;
    const playbook = document.getElementById("playbook").value;
    try {
      const response = await api("/api/reviews?playbook=" + encodeURIComponent(playbook), {
        method: "POST",
        body: file,
        headers: { "X-Filename": encodeURIComponent(file.name), "Content-Type": "application/octet-stream" },
      });
      if (response.ok) {
        window.location.href = (await response.json()).url;
        return;
      }
      show(error, "Refused (" + response.status + "): " + (await errorText(response)));
    } catch (e) {
      show(error, "The upload failed: " + e.message);
    }
    show(status, "");
    button.disabled = false;
  });
}

// ------------------------------------------------------------------------------ review page
const ACTIVE = ["queued", "running"];

function setUpReview(root) {
  const id = root.dataset.id;
  const progress = document.getElementById("progress");
  const filters = ["filter-severity", "filter-rule", "filter-open"].map((f) => document.getElementById(f));

  function saved(name) { return sessionStorage.getItem(id + ":" + name) || ""; }
  filters[0].value = saved("severity");
  filters[2].checked = saved("open") === "1";

  function rebuildRules() {
    const select = filters[1];
    const wanted = select.value || saved("rule");
    const rules = [...new Set([...document.querySelectorAll("article.finding")].map((a) => a.dataset.rule))].sort();
    select.replaceChildren(new Option("all", ""), ...rules.map((r) => new Option(r, r)));
    select.value = rules.includes(wanted) ? wanted : "";
  }

  function applyFilters() {
    const [severity, rule, open] = [filters[0].value, filters[1].value, filters[2].checked];
    sessionStorage.setItem(id + ":severity", severity);
    sessionStorage.setItem(id + ":rule", rule);
    sessionStorage.setItem(id + ":open", open ? "1" : "");
    const cards = [...document.querySelectorAll("article.finding")];
    let shown = 0;
    for (const card of cards) {
      const visible = (!severity || card.dataset.severity === severity)
        && (!rule || card.dataset.rule === rule) && (!open || card.dataset.state === "open");
      card.classList.toggle("hidden", !visible);
      shown += visible ? 1 : 0;
    }
    document.getElementById("shown").textContent = "showing " + shown + " of " + cards.length + " findings";
  }

  async function refreshPanes() {
    const response = await api("/reviews/" + id + "/panes");
    if (!response.ok) return;
    const panes = document.getElementById("panes");
    const scroll = [...panes.querySelectorAll(".pane")].map((p) => p.scrollTop);
    panes.innerHTML = await response.text();
    panes.querySelectorAll(".pane").forEach((p, i) => { p.scrollTop = scroll[i] || 0; });
    rebuildRules();
    applyFilters();
  }

  async function poll() {
    const response = await api("/api/reviews/" + id + "/progress");
    if (!response.ok) return;
    const state = await response.json();
    progress.querySelector("progress").max = Math.max(state.total, 1);
    progress.querySelector("progress").value = state.done;
    if (String(state.done) !== progress.dataset.done) {
      progress.dataset.done = String(state.done);
      await refreshPanes();
    }
    if (ACTIVE.includes(state.status)) {
      document.getElementById("progress-text").textContent =
        (state.status === "queued" ? "waiting for the model" : "auditing") + ": " + state.done + " of " + state.total + " clauses answered";
      setTimeout(poll, 700);
    } else if (state.status !== progress.dataset.status) {
      window.location.reload(); // finished: the server renders the final header and downloads
    }
  }

  function flash(element) {
    element.scrollIntoView({ block: "center", behavior: "smooth" });
    element.classList.add("flash");
    setTimeout(() => element.classList.remove("flash"), 1500);
  }

  async function decide(card, decision) {
    const body = {
      clause: Number(card.dataset.clause), finding: Number(card.dataset.finding), decision: decision,
      text: decision === "accept" ? card.querySelector("textarea").value : null,
    };
    const response = await api("/api/reviews/" + id + "/decisions", {
      method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" },
    });
    if (!response.ok) {
      const message = document.createElement("p");
      message.className = "error";
      message.setAttribute("role", "alert");
      message.textContent = await errorText(response);
      card.append(message);
      return;
    }
    await refreshPanes();
  }

  document.addEventListener("click", (event) => {
    const target = event.target;
    const button = target.closest("button[data-decision]");
    if (button) { decide(button.closest("article.finding"), button.dataset.decision); return; }
    if (target.id === "resume") {
      api("/api/reviews/" + id + "/resume", { method: "POST" }).then(() => window.location.reload());
      return;
    }
    const card = target.closest("article.finding");
    if (card && !target.closest("textarea, label")) {
      event.preventDefault();
      const clause = document.getElementById("clause-" + card.dataset.clause);
      if (clause) flash(clause);
      return;
    }
    const clause = target.closest("p.clause");
    if (clause) {
      const first = document.querySelector('article.finding[data-clause="' + clause.dataset.clause + '"]:not(.hidden)');
      if (first) flash(first);
    }
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && event.target.matches("p.clause")) event.target.click();
  });
  filters.forEach((f) => f.addEventListener("change", applyFilters));
  rebuildRules();
  applyFilters();
  if (ACTIVE.includes(progress.dataset.status)) poll();
}

const uploadForm = document.getElementById("upload");
if (uploadForm) setUpUpload(uploadForm);
const reviewRoot = document.getElementById("review");
if (reviewRoot) setUpReview(reviewRoot);
