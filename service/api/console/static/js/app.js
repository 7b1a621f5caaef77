// The console's shell: sign-in with the admin key, tabs chosen by the URL hash (#search,
// #adapters, #runs, #comparisons, #analytics, #rules; so a reload or a shared link keeps the
// tab), each tab built on first visit and refreshed on every visit.

import { adminKey, api } from "./api.js";
import { createAdaptersTab } from "./adapters.js";
import { createAnalyticsTab } from "./analytics.js";
import { createComparisonsTab } from "./comparisons.js";
import { clear, errorText, message } from "./dom.js";
import { createRulesTab } from "./rules.js";
import { createRunsTab } from "./runs.js";
import { createSearchTab } from "./search.js";

const TABS = {
  search: createSearchTab,
  adapters: createAdaptersTab,
  runs: createRunsTab,
  comparisons: createComparisonsTab,
  analytics: createAnalyticsTab,
  rules: createRulesTab,
};
const built = {};

const $ = (id) => document.getElementById(id);

function showLogin(text) {
  $("login").hidden = false;
  $("tabs").hidden = true;
  $("logout").hidden = true;
  for (const name of Object.keys(TABS)) $(`tab-${name}`).hidden = true;
  clear($("login-error"));
  if (text) $("login-error").append(message("error", text));
  $("admin-key").focus();
}

function showTab() {
  const name = location.hash.slice(1) in TABS ? location.hash.slice(1) : "search";
  $("login").hidden = true;
  $("tabs").hidden = false;
  $("logout").hidden = false;
  for (const [tab, create] of Object.entries(TABS)) {
    const section = $(`tab-${tab}`);
    section.hidden = tab !== name;
    if (tab === name) {
      built[tab] ??= create(section) || {};
      built[tab].show?.();
    }
  }
  for (const link of document.querySelectorAll("#tabs a")) {
    link.classList.toggle("active", link.dataset.tab === name);
  }
}

// One cheap admin call proves the key before anything else is shown.
async function signIn(key) {
  try {
    await api("/admin/adapters", { key });
  } catch (err) {
    if (err.status === 401) return "The admin key was refused (401). Check OSPO_ADMIN_API_KEY.";
    return `Could not check the key: ${errorText(err)}`;
  }
  adminKey.set(key);
  return null;
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const problem = await signIn($("admin-key").value);
    if (problem) {
      showLogin(problem);
      return;
    }
    $("admin-key").value = "";
    showTab();
  });
  $("logout").addEventListener("click", () => {
    adminKey.clear();
    showLogin();
  });
  window.addEventListener("hashchange", () => adminKey.get() && showTab());
  window.addEventListener("ospo:unauthorized", (event) => {
    adminKey.clear();
    showLogin(`The admin key was refused: ${event.detail}. Sign in again.`);
  });
  if (adminKey.get()) showTab();
  else showLogin();
});
