// End-of-test summary: the full k6 summary data as JSON plus a short readable text, written
// to RESULTS_DIR/<scenario>-summary.json and .txt (the directory must exist) and to stdout.
import { PROFILE, RESULTS_DIR } from './config.js';

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

function thresholdLines(data) {
  const lines = [];
  for (const name of Object.keys(data.metrics).sort()) {
    const metric = data.metrics[name];
    for (const [expression, result] of Object.entries(metric.thresholds || {})) {
      const key = (expression.match(/^\s*([a-z]+(?:\([\d.]+\))?)/) || [])[1];
      const observed = formatValue(metric, key, metric.values[key]);
      lines.push(`  ${result.ok ? 'PASS' : 'FAIL'}  ${name}  ${expression}  (${key}=${observed})`);
    }
  }
  return lines;
}

// The readable summary: run facts, every threshold with its observed value, every metric.
export function textSummary(scenario, data) {
  const seconds = (data.state.testRunDurationMs / 1000).toFixed(1);
  const thresholds = thresholdLines(data);
  const failed = thresholds.filter((line) => line.startsWith('  FAIL')).length;
  const width = Math.max(...Object.keys(data.metrics).map((name) => name.length));
  const metrics = Object.keys(data.metrics)
    .sort()
    .map((name) => `  ${name.padEnd(width)}  ${describe(data.metrics[name])}`);
  return [
    `roomhub load lab: ${scenario} (profile ${PROFILE}), ${seconds} s`,
    '',
    `thresholds: ${thresholds.length - failed} passed, ${failed} failed`,
    ...thresholds,
    '',
    'metrics:',
    ...metrics,
    '',
  ].join('\n');
}
