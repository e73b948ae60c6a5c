// End-of-test summary: the full k6 summary data as JSON, a short readable text and an HTML
// page with every threshold as PASS/FAIL, written to RESULTS_DIR/<scenario>-summary.json,
// .txt and .html (the directory must exist: k6 can't create it); the text also goes to stdout
// and ends with the paths written, the web dashboard's report (K6_WEB_DASHBOARD_EXPORT) too.
//
// k6 passes a threshold on a metric with no samples. Here a threshold on a trend with no
// samples (values.count 0: keep `count` in summaryTrendStats, as TREND_STATS does) is a FAIL,
// in the JSON too; k6's exit code doesn't know it (`make k6` exits 99 for it, bench/k6run.py).
import { PROFILE, RESULTS_DIR, WS_URL } from './config.js';
import { BREAKDOWNS, TALLY } from './health.js';

// Settings a scenario may read from the environment (k6/lib/config.js and the scenarios):
// the ones set are named in the summaries' titles.
const SETTINGS = [
  'VUS', 'BASE_VUS', 'PEAK_VUS', 'ROOMS', 'ROOM', 'DURATION', 'SESSION', 'WAIT',
  'SEND_EVERY_MS', 'PROBES', 'PROBE_EVERY_MS', 'RATE',
];

// Trend statistics kept in the summary (bench/run.py reads med, p(95) and p(99)).
export const TREND_STATS = ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max', 'count'];

// A `handleSummary` for the scenario called `scenario`.
export function summaryWriter(scenario) {
  return (data) => {
    failEmptyTrends(data);
    const base = `${RESULTS_DIR}/${scenario}-summary`;
    const paths = ['json', 'txt', 'html'].map((ext) => `${base}.${ext}`);
    const written = [...paths];
    if (__ENV.K6_WEB_DASHBOARD === 'true' && __ENV.K6_WEB_DASHBOARD_EXPORT) {
      written.push(__ENV.K6_WEB_DASHBOARD_EXPORT);
    }
    const text = `${textSummary(scenario, data)}\nwritten: ${written.join(' ')}\n`;
    return {
      [paths[0]]: JSON.stringify(data, null, 2),
      [paths[1]]: text,
      [paths[2]]: htmlSummary(scenario, data),
      stdout: text,
    };
  };
}

// Marks every threshold of a trend that has no samples as failed (ok: false), in place.
export function failEmptyTrends(data) {
  for (const metric of Object.values(data.metrics)) {
    if (metric.type === 'trend' && metric.values.count === 0) {
      for (const result of Object.values(metric.thresholds || {})) {
        result.ok = false;
      }
    }
  }
}

// "profile smoke, 100 VUs max, 30.3 s, ws://..., VUS=40": what the run was, in one line.
export function runSettings(data) {
  const seconds = (data.state.testRunDurationMs / 1000).toFixed(1);
  const vusMax = data.metrics.vus_max ? data.metrics.vus_max.values.max : undefined;
  const parts = [`profile ${PROFILE}`];
  if (vusMax !== undefined) {
    parts.push(`${vusMax} VUs max`);
  }
  parts.push(`${seconds} s`, WS_URL);
  for (const name of SETTINGS) {
    if (__ENV[name]) {
      parts.push(`${name}=${__ENV[name]}`);
    }
  }
  return parts.join(', ');
}

function formatValue(metric, key, value) {
  if (value === undefined || value === null) {
    return '-';
  }
  if (metric.type === 'rate' && key === 'rate') {
    return `${(value * 100).toFixed(2)}%`;
  }
  if (metric.contains === 'time' && key !== 'count') {
    return value >= 1000 ? `${(value / 1000).toFixed(2)}s` : `${value.toFixed(2)}ms`;
  }
  return Number.isInteger(value) ? String(value) : value.toFixed(2);
}

function describe(metric) {
  const v = metric.values;
  switch (metric.type) {
    case 'trend':
      return TREND_STATS.filter((key) => key in v)
        .map((key) => `${key}=${formatValue(metric, key, v[key])}`)
        .join(' ');
    case 'counter':
      return `${v.count} (${v.rate.toFixed(1)}/s)`;
    case 'rate':
      return `${formatValue(metric, 'rate', v.rate)} (${v.passes} of ${v.passes + v.fails})`;
    default:
      return `${formatValue(metric, 'value', v.value)} (min ${v.min}, max ${v.max})`;
  }
}

// Real thresholds of a metric: all but the TALLY that only keeps a breakdown sub-metric.
function realThresholds(metric) {
  return Object.entries(metric.thresholds || {}).filter(([expression]) => expression !== TALLY);
}

// A sub-metric that is in the data only for its breakdown (TALLY is its one threshold).
function tallyOnly(metric) {
  return metric.thresholds !== undefined && realThresholds(metric).length === 0;
}

// Every real threshold: { ok, metric, expression, key, observed }, sorted by metric name.
export function thresholdRows(data) {
  const rows = [];
  for (const name of Object.keys(data.metrics).sort()) {
    const metric = data.metrics[name];
    for (const [expression, result] of realThresholds(metric)) {
      const key = (expression.match(/^\s*([a-z]+(?:\([\d.]+\))?)/) || [])[1];
      const empty = metric.type === 'trend' && metric.values.count === 0;
      const observed = empty ? 'no samples' : formatValue(metric, key, metric.values[key]);
      rows.push({ ok: result.ok, metric: name, expression, key, observed });
    }
  }
  return rows;
}

function thresholdLines(data) {
  return thresholdRows(data).map(
    (r) => `  ${r.ok ? 'PASS' : 'FAIL'}  ${r.metric}  ${r.expression}  (${r.key}=${r.observed})`,
  );
}

// One line per BREAKDOWNS metric: its non-zero counts by tag value, e.g.
// "chat_errors_received by code: busy=12 rate_limited=3", or "none".
function breakdowns(data) {
  return Object.entries(BREAKDOWNS).map(([name, [tag, values]]) => {
    const counts = values
      .map((value) => [value, data.metrics[`${name}{${tag}:${value}}`]])
      .filter(([, metric]) => metric && metric.values.count > 0)
      .map(([value, metric]) => [value, metric.values.count]);
    return { name, tag, counts };
  });
}

function breakdownLines(data) {
  return breakdowns(data).map(({ name, tag, counts }) => {
    const text = counts.map(([value, count]) => `${value}=${count}`).join(' ');
    return `  ${name} by ${tag}: ${text || 'none'}`;
  });
}

function escapeHtml(text) {
  return String(text)
    .replaceAll('&', '&amp;')
    .replaceAll('<', '&lt;')
    .replaceAll('>', '&gt;')
    .replaceAll('"', '&quot;');
}

// The HTML summary: verdict, scenario and settings in the title, every threshold as a
// PASS/FAIL row with its observed value, the counts by tag (zeros shown), every metric.
export function htmlSummary(scenario, data) {
  const rows = thresholdRows(data);
  const failed = rows.filter((r) => !r.ok).length;
  const verdict = failed ? `FAIL (${failed} of ${rows.length} thresholds failed)` : `PASS (${rows.length} thresholds)`;
  const title = `${scenario}: ${verdict}, ${runSettings(data)}`;
  const cell = (text, cls) => `<td${cls ? ` class="${cls}"` : ''}>${escapeHtml(text)}</td>`;
  const thresholdHtml = rows
    .map(
      (r) =>
        `<tr class="${r.ok ? 'pass' : 'fail'}">${cell(r.ok ? 'PASS' : 'FAIL', 'verdict')}` +
        `${cell(r.metric)}${cell(r.expression)}${cell(`${r.key}=${r.observed}`)}</tr>`,
    )
    .join('\n');
  const lost = data.metrics.chat_messages_lost ? data.metrics.chat_messages_lost.values.count : 0;
  const lostHtml = `<tr class="${lost ? 'nonzero' : 'zero'}">${cell('chat_messages_lost')}${cell(lost)}${cell('')}</tr>`;
  const countHtml = breakdowns(data)
    .map(({ name, tag, counts }) => {
      const total = counts.reduce((sum, [, count]) => sum + count, 0);
      const text = counts.map(([value, count]) => `${value}=${count}`).join(' ') || 'none';
      return `<tr class="${total ? 'nonzero' : 'zero'}">${cell(`${name} by ${tag}`)}${cell(total)}${cell(text)}</tr>`;
    })
    .join('\n');
  const names = Object.keys(data.metrics)
    .filter((name) => !tallyOnly(data.metrics[name]))
    .sort();
  const metricHtml = names
    .map((name) => `<tr>${cell(name)}${cell(describe(data.metrics[name]))}</tr>`)
    .join('\n');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>roomhub load lab: ${escapeHtml(title)}</title>
<style>
body { font: 14px system-ui, sans-serif; margin: 1.5rem; color: #1d2230; }
h1 { font-size: 1.3rem; } h1 .pass, td.verdict { font-weight: 700; }
.pass .verdict, h1 .pass { color: #0b7a5a; } .fail .verdict, h1 .fail { color: #b3261e; }
tr.fail { background: #fdecea; } tr.nonzero { background: #fff4d6; }
table { border-collapse: collapse; margin-bottom: 1.5rem; }
td, th { border: 1px solid #e1e4ec; padding: 0.3rem 0.6rem; text-align: left; vertical-align: top; }
</style></head>
<body>
<h1>roomhub load lab: ${escapeHtml(scenario)}: <span class="${failed ? 'fail' : 'pass'}">${escapeHtml(verdict)}</span></h1>
<p id="settings">${escapeHtml(runSettings(data))}</p>
<h2>Thresholds</h2>
<table id="thresholds"><tr><th>result</th><th>metric</th><th>threshold</th><th>observed</th></tr>
${thresholdHtml}
</table>
<h2>Counts by tag</h2>
<table id="counts"><tr><th>metric</th><th>total</th><th>by value</th></tr>
${lostHtml}
${countHtml}
</table>
<h2>Metrics</h2>
<table id="metrics"><tr><th>metric</th><th>values</th></tr>
${metricHtml}
</table>
</body></html>
`;
}

// The readable summary: run facts, every threshold with its observed value, the counts by
// code, every metric (breakdown-only sub-metrics left out: they are in the counts by code).
export function textSummary(scenario, data) {
  const thresholds = thresholdLines(data);
  const failed = thresholds.filter((line) => line.startsWith('  FAIL')).length;
  const names = Object.keys(data.metrics)
    .filter((name) => !tallyOnly(data.metrics[name]))
    .sort();
  const width = Math.max(...names.map((name) => name.length));
  const metrics = names.map((name) => `  ${name.padEnd(width)}  ${describe(data.metrics[name])}`);
  return [
    `roomhub load lab: ${scenario} (${runSettings(data)})`,
    '',
    `thresholds: ${thresholds.length - failed} passed, ${failed} failed`,
    ...thresholds,
    '',
    'counts by tag (non-zero only):',
    ...breakdownLines(data),
    '',
    'metrics:',
    ...metrics,
    '',
  ].join('\n');
}
