// Backstock's job dashboard: read-only, a client of the JSON:API like any other.
//
// The key typed into the page is kept in this tab's sessionStorage only (never a URL, a cookie
// or localStorage) and sent as `Authorization: Klaviyo-API-Key …` with revision 2026-10-15.
// Everything shown that came from the API is put in the page as text (textContent, attribute
// values), never parsed as HTML: ids and error details are user data.
"use strict";

(() => {
  const REVISION = "2026-10-15";
  const MEDIA_TYPE = "application/vnd.api+json";
  const KEY_STORAGE = "backstock.apiKey";
  const POLL_MS = 1500; // job lists and the open job
  const COUNT_MS = 10000; // catalog counts
  const COUNT_PAGES = 10; // counts are exact up to 10 pages of 100; beyond, "1000+"
  const SHOWN_PER_STATUS = 60;
  const STATUSES = ["queued", "processing", "complete"];
  const JOB_FIELDS = "status,created_at,total_count,completed_count,failed_count,completed_at";
  const RESOURCES = [
    { type: "catalog-item", path: "/api/catalog-items", plural: "items", count: "count-items" },
    {
      type: "catalog-variant",
      path: "/api/catalog-variants",
      plural: "variants",
      count: "count-variants",
    },
    {
      type: "catalog-category",
      path: "/api/catalog-categories",
      plural: "categories",
      count: "count-categories",
    },
  ];
  const KINDS = RESOURCES.flatMap((res) =>
    ["create", "update", "delete"].map((action) => ({
      type: `${res.type}-bulk-${action}-job`,
      path: `/api/${res.type}-bulk-${action}-jobs`,
      label: `${res.plural} · ${action}`,
    })),
  );
  const KIND_BY_TYPE = new Map(KINDS.map((kind) => [kind.type, kind]));

  const $ = (id) => document.getElementById(id);

  class SignedOut extends Error {}

  class ApiError extends Error {
    constructor(status, body, retryAfter) {
      const first = body && Array.isArray(body.errors) ? body.errors[0] : null;
      const detail = first && typeof first.detail === "string" ? first.detail : "";
      super(`HTTP ${status}${detail ? `: ${detail}` : ""}`);
      this.status = status;
      this.retryAfter = Number(retryAfter) || 0;
    }
  }

  // ---- the key -----------------------------------------------------------------------------

  const storedKey = () => sessionStorage.getItem(KEY_STORAGE);
  const usableKey = (key) => /^[\x21-\x7e]{8,512}$/.test(key);

  async function api(path) {
    const key = storedKey();
    if (!key) throw new SignedOut();
    const response = await fetch(path, {
      headers: { Authorization: `Klaviyo-API-Key ${key}`, revision: REVISION, Accept: MEDIA_TYPE },
      cache: "no-store",
      credentials: "omit",
      redirect: "error",
      referrerPolicy: "no-referrer",
    });
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    if (!response.ok) throw new ApiError(response.status, body, response.headers.get("Retry-After"));
    return body;
  }

  function query(params) {
    return new URLSearchParams(params).toString();
  }

  // ---- state ---------------------------------------------------------------------------------

  let timer = null;
  let lastCount = 0;
  let selected = null; // {kind, id}
  let generation = 0; // bumped on sign-in and sign-out: late answers of an old session are dropped

  function setStatus(text, problem = false) {
    const status = $("status");
    status.textContent = text;
    status.classList.toggle("problem", problem);
  }

  function showSignedIn(signedIn) {
    $("sign-in").hidden = signedIn;
    $("dashboard").hidden = !signedIn;
    $("sign-out").hidden = !signedIn;
  }

  function signOut(message) {
    sessionStorage.removeItem(KEY_STORAGE);
    generation += 1;
    if (timer !== null) clearTimeout(timer);
    timer = null;
    selected = null;
    for (const status of STATUSES) {
      const column = $(`jobs-${status}`);
      column.querySelector(".job-list").replaceChildren();
      column.querySelector(".n").textContent = "";
    }
    for (const res of RESOURCES) $(res.count).textContent = "…";
    $("job-detail").hidden = true;
    showSignedIn(false);
    $("sign-in-error").textContent = message || "";
    setStatus("Signed out");
    $("api-key").focus();
  }

  async function signIn(event) {
    event.preventDefault();
    const input = $("api-key");
    const key = input.value.trim();
    input.value = "";
    if (!usableKey(key)) {
      $("sign-in-error").textContent = "That does not look like an API key (pk_…).";
      return;
    }
    $("sign-in-error").textContent = "";  // the last attempt's refusal is not this one's
    sessionStorage.setItem(KEY_STORAGE, key);
    try {
      await api(`/api/catalog-items?${query({ "page[size]": "1", "fields[catalog-item]": "external_id" })}`);
    } catch (error) {
      const refused = error instanceof ApiError && (error.status === 401 || error.status === 403);
      signOut(refused ? `The key was refused (${error.message}).` : `Could not sign in: ${error.message}`);
      return;
    }
    start();
  }

  function start() {
    generation += 1;
    lastCount = 0;
    showSignedIn(true);
    $("sign-in-error").textContent = "";
    setStatus("Loading…");
    tick(generation);
  }

  // ---- polling -------------------------------------------------------------------------------

  function schedule(mine, delay) {
    if (mine !== generation) return;
    if (timer !== null) clearTimeout(timer);
    timer = setTimeout(() => tick(mine), delay);
  }

  async function tick(mine) {
    timer = null;
    if (mine !== generation || !storedKey()) return;
    if (document.hidden) return; // resumed by visibilitychange
    let delay = POLL_MS;
    try {
      const work = [refreshJobs(mine), refreshDetail(mine)];
      if (Date.now() - lastCount >= COUNT_MS) {
        lastCount = Date.now();
        work.push(refreshCounts(mine));
      }
      await Promise.all(work);
      if (mine === generation) setStatus(`Live · updated ${new Date().toLocaleTimeString()}`);
    } catch (error) {
      if (mine !== generation) return;
      if (error instanceof SignedOut) return;
      if (error instanceof ApiError && (error.status === 401 || error.status === 403)) {
        signOut(`Signed out: the key was refused (${error.message}).`);
        return;
      }
      if (error instanceof ApiError && error.status === 429) {
        delay = Math.max(POLL_MS, error.retryAfter * 1000);
        setStatus(`Rate limited; retrying in ${Math.ceil(delay / 1000)} s`, true);
      } else {
        delay = POLL_MS * 2;
        setStatus(`Cannot reach the API (${error.message}); retrying`, true);
      }
    }
    schedule(mine, delay);
  }

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && storedKey() && timer === null) tick(generation);
  });

  // ---- catalog counts ------------------------------------------------------------------------

  async function count(res) {
    let total = 0;
    let cursor = null;
    for (let page = 0; page < COUNT_PAGES; page += 1) {
      const params = { "page[size]": "100", [`fields[${res.type}]`]: "external_id" };
      if (cursor) params["page[cursor]"] = cursor;
      const body = await api(`${res.path}?${query(params)}`);
      total += Array.isArray(body.data) ? body.data.length : 0;
      const next = body.links && typeof body.links.next === "string" ? body.links.next : null;
      if (!next) return String(total);
      // Follow the cursor on this origin (links carry the server's public base URL).
      cursor = new URL(next, location.href).searchParams.get("page[cursor]");
      if (!cursor) break;
    }
    return `${total}+`;
  }

  async function refreshCounts(mine) {
    const counted = await Promise.all(RESOURCES.map(count));
    if (mine !== generation) return;
    RESOURCES.forEach((res, index) => {
      $(res.count).textContent = counted[index];
    });
  }

  // ---- job lists -----------------------------------------------------------------------------

  async function listJobs(kind, status) {
    const params = {
      filter: `equals(status,'${status}')`,
      [`fields[${kind.type}]`]: JOB_FIELDS,
    };
    const body = await api(`${kind.path}?${query(params)}`);
    const jobs = Array.isArray(body.data) ? body.data : [];
    const more = Boolean(body.links && body.links.next);
    return { kind, status, jobs, more };
  }

  async function refreshJobs(mine) {
    const lists = await Promise.all(
      KINDS.flatMap((kind) => STATUSES.map((status) => listJobs(kind, status))),
    );
    if (mine !== generation) return;
    for (const status of STATUSES) {
      const mineLists = lists.filter((list) => list.status === status);
      const rows = mineLists.flatMap((list) => list.jobs.map((job) => ({ kind: list.kind, job })));
      rows.sort((a, b) => String(b.job.attributes?.created_at).localeCompare(String(a.job.attributes?.created_at)));
      const more = mineLists.some((list) => list.more);
      renderColumn(status, rows, more);
    }
  }

  function text(tag, content, className) {
    const element = document.createElement(tag);
    element.textContent = content;
    if (className) element.className = className;
    return element;
  }

  function when(iso) {
    if (typeof iso !== "string") return "";
    const date = new Date(iso);
    return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
  }

  function counts(attributes) {
    const total = Number(attributes.total_count) || 0;
    const completed = Number(attributes.completed_count) || 0;
    const failed = Number(attributes.failed_count) || 0;
    return { total, completed, failed, done: Math.min(total, completed + failed) };
  }

  function jobRow(kind, job) {
    const attributes = job.attributes || {};
    const { total, failed, done } = counts(attributes);
    const id = String(job.id);
    const status = String(attributes.status || "");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "job";
    button.dataset.jobId = id;
    button.dataset.kind = kind.type;
    button.dataset.status = status;
    if (selected && selected.id === id && selected.kind.type === kind.type) {
      button.classList.add("selected");
    }
    button.append(text("span", kind.label, "kind"), text("time", when(attributes.created_at)));
    button.append(text("span", id, "id"));
    const progress = document.createElement("progress");
    progress.max = Math.max(total, 1);
    progress.value = done;
    button.append(progress);
    const line = text("span", `${done} / ${total}`, "progress");
    if (failed > 0) line.append(" · ", text("span", `${failed} failed`, "failed"));
    button.append(line);
    button.addEventListener("click", () => select(kind, id));
    const item = document.createElement("li");
    item.append(button);
    return item;
  }

  function renderColumn(status, rows, more) {
    const column = $(`jobs-${status}`);
    const items = rows.slice(0, SHOWN_PER_STATUS).map(({ kind, job }) => jobRow(kind, job));
    const hidden = rows.length - items.length;
    if (items.length === 0) items.push(text("li", "None", "more"));
    if (hidden > 0 || more) {
      const note = more ? "more: each kind lists its 100 newest" : `${hidden} more not shown`;
      items.push(text("li", note, "more"));
    }
    column.querySelector(".job-list").replaceChildren(...items);
    column.querySelector(".n").textContent = `${rows.length}${more ? "+" : ""}`;
  }

  // ---- one job -------------------------------------------------------------------------------

  function select(kind, id) {
    selected = { kind, id };
    for (const button of document.querySelectorAll(".job")) {
      button.classList.toggle(
        "selected",
        button.dataset.jobId === id && button.dataset.kind === kind.type,
      );
    }
    $("job-detail").hidden = false;
    $("detail-id").textContent = id;
    refreshDetail(generation).catch((error) => {
      setStatus(`Could not load the job (${error.message})`, true);
    });
  }

  async function refreshDetail(mine) {
    if (!selected) return;
    const { kind, id } = selected;
    let body;
    try {
      body = await api(`${kind.path}/${encodeURIComponent(id)}`);
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) {
        if (selected && selected.id === id) renderGone(id);
        return;
      }
      throw error;
    }
    if (mine !== generation || !selected || selected.id !== id) return;
    renderDetail(kind, body.data || {});
  }

  function renderGone(id) {
    $("detail-id").textContent = id;
    $("detail-facts").replaceChildren(text("dt", "Status"), text("dd", "gone (expired or deleted)"));
  }

  function renderDetail(kind, job) {
    const attributes = job.attributes || {};
    const { total, completed, failed, done } = counts(attributes);
    $("detail-id").textContent = String(job.id);
    const facts = [
      ["Kind", kind.label],
      ["Status", String(attributes.status || "")],
      ["Progress", `${done} / ${total} (${completed} applied, ${failed} failed)`],
      ["Created", when(attributes.created_at)],
      ["Completed", when(attributes.completed_at) || "—"],
      ["Expires", when(attributes.expires_at) || "—"],
    ];
    $("detail-facts").replaceChildren(
      ...facts.flatMap(([name, value]) => [text("dt", name), text("dd", value)]),
    );
    $("detail-facts").dataset.status = String(attributes.status || "");
    const progress = $("detail-progress");
    progress.max = Math.max(total, 1);
    progress.value = done;
    const errors = Array.isArray(attributes.errors) ? attributes.errors : [];
    $("detail-error-count").textContent = errors.length ? `(${errors.length})` : "";
    $("detail-no-errors").hidden = errors.length > 0;
    $("detail-errors").hidden = errors.length === 0;
    const rows = errors.map((error) => {
      const row = document.createElement("tr");
      const pointer = error && error.source && typeof error.source.pointer === "string"
        ? error.source.pointer
        : "";
      row.append(
        text("td", pointer, "pointer"),
        text("td", String(error?.code ?? ""), "code"),
        text("td", String(error?.title ?? "")),
        text("td", String(error?.detail ?? "")),
      );
      return row;
    });
    $("detail-errors").querySelector("tbody").replaceChildren(...rows);
  }

  // ---- start ---------------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("sign-in-form").addEventListener("submit", signIn);
    $("sign-out").addEventListener("click", () => signOut(""));
    $("detail-close").addEventListener("click", () => {
      selected = null;
      $("job-detail").hidden = true;
      for (const button of document.querySelectorAll(".job.selected")) {
        button.classList.remove("selected");
      }
    });
    if (storedKey()) start();
    else signOut("");
  });
})();
