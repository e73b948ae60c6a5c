// End-of-test summary: the full k6 summary data as JSON plus a short readable text, written
// to RESULTS_DIR/<scenario>-summary.json and .txt (the directory must exist: k6 can't create
// it) and to stdout.
import { PROFILE, RESULTS_DIR } from './config.js';
import { BREAKDOWNS, TALLY } from './health.js';

// Trend statistics kept in the summary (bench/run.py reads med, p(95) and p(99)).
export const TREND_STATS = ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max', 'count'];

// A `handleSummary` for the scenario called `scenario`.
export function summaryWriter(scenario) {
  return (data) => {
    const text = textSummary(scenario, data);
    return {
      [`${RESULTS_DIR}/${scenario}-summary.json`]: JSON.stringify(data, null, 2),
      [`${RESULTS_DIR}/${scenario}-summary.txt`]: text,
      stdout: text,
    };
  };
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

function thresholdLines(data) {
  const lines = [];
  for (const name of Object.keys(data.metrics).sort()) {
    const metric = data.metrics[name];
    for (const [expression, result] of realThresholds(metric)) {
      const key = (expression.match(/^\s*([a-z]+(?:\([\d.]+\))?)/) || [])[1];
      const observed = formatValue(metric, key, metric.values[key]);
      lines.push(`  ${result.ok ? 'PASS' : 'FAIL'}  ${name}  ${expression}  (${key}=${observed})`);
    }
  }
  return lines;
}

// One line per BREAKDOWNS metric: its non-zero counts by tag value, e.g.
// "chat_errors_received by code: busy=12 rate_limited=3", or "none".
function breakdownLines(data) {
  return Object.entries(BREAKDOWNS).map(([name, [tag, values]]) => {
    const counts = values
      .map((value) => [value, data.metrics[`${name}{${tag}:${value}}`]])
      .filter(([, metric]) => metric && metric.values.count > 0)
      .map(([value, metric]) => `${value}=${metric.values.count}`);
    return `  ${name} by ${tag}: ${counts.length ? counts.join(' ') : 'none'}`;
  });
}

// The readable summary: run facts, every threshold with its observed value, the counts by
// code, every metric (breakdown-only sub-metrics left out: they are in the counts by code).
export function textSummary(scenario, data) {
  const seconds = (data.state.testRunDurationMs / 1000).toFixed(1);
  const thresholds = thresholdLines(data);
  const failed = thresholds.filter((line) => line.startsWith('  FAIL')).length;
  const names = Object.keys(data.metrics)
    .filter((name) => !tallyOnly(data.metrics[name]))
    .sort();
  const width = Math.max(...names.map((name) => name.length));
  const metrics = names.map((name) => `  ${name.padEnd(width)}  ${describe(data.metrics[name])}`);
  return [
    `roomhub load lab: ${scenario} (profile ${PROFILE}), ${seconds} s`,
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
