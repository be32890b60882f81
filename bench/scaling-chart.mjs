// Draws the scaling report's chart as a standalone SVG: time per training step against sequence
// length, both axes logarithmic, one line per attention, with dashed O(n) and O(n^2) guides
// through the first softmax point so that linear and quadratic growth can be read off directly.
// No dependencies: the chart is plain SVG text.

const COLORS = ['#1b9e77', '#d95f02', '#7570b3', '#e7298a', '#66a61e', '#e6ab02'];

function esc(s) {
  return String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

/** 1, 2, 5 x 10^k ticks covering [lo, hi]. */
function decadeTicks(lo, hi) {
  const ticks = [];
  for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
    for (const m of [1, 2, 5]) {
      const v = m * 10 ** e;
      if (v >= lo / 1.0001 && v <= hi * 1.0001) ticks.push(v);
    }
  }
  return ticks;
}

function formatMs(v) {
  if (v >= 1000) return `${v / 1000} s`;
  return `${v} ms`;
}

/**
 * series: [{ name, points: [[n, ms], ...] }]; returns the SVG text.
 * options: { title, subtitle }
 */
export function scalingSvg(series, options = {}) {
  const W = 760;
  const H = 480;
  const m = { left: 72, right: 170, top: 56, bottom: 56 };
  const all = series.flatMap((s) => s.points);
  const ns = all.map((p) => p[0]);
  const ts = all.map((p) => p[1]);
  const xMin = Math.min(...ns);
  const xMax = Math.max(...ns);
  const yMin = 10 ** Math.floor(Math.log10(Math.min(...ts)));
  const yMax = 10 ** Math.ceil(Math.log10(Math.max(...ts)));
  const px = (n) => m.left + ((Math.log2(n) - Math.log2(xMin)) / Math.max(1e-9, Math.log2(xMax) - Math.log2(xMin))) * (W - m.left - m.right);
  const py = (t) => H - m.bottom - ((Math.log10(t) - Math.log10(yMin)) / Math.max(1e-9, Math.log10(yMax) - Math.log10(yMin))) * (H - m.top - m.bottom);
  const out = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="Helvetica, Arial, sans-serif" font-size="12">`);
  out.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  out.push(`<text x="${m.left}" y="24" font-size="16" font-weight="bold">${esc(options.title ?? 'Scaling')}</text>`);
  if (options.subtitle) out.push(`<text x="${m.left}" y="42" fill="#555">${esc(options.subtitle)}</text>`);
  // Grid and ticks.
  const xTicks = [...new Set(ns)].sort((a, b) => a - b);
  for (const n of xTicks) {
    const x = px(n).toFixed(1);
    out.push(`<line x1="${x}" y1="${m.top}" x2="${x}" y2="${H - m.bottom}" stroke="#eee"/>`);
    out.push(`<text x="${x}" y="${H - m.bottom + 16}" text-anchor="middle">${n >= 1024 ? `${n / 1024}K` : n}</text>`);
  }
  for (const t of decadeTicks(yMin, yMax)) {
    const y = py(t).toFixed(1);
    out.push(`<line x1="${m.left}" y1="${y}" x2="${W - m.right}" y2="${y}" stroke="${Number.isInteger(Math.log10(t)) ? '#ddd' : '#f2f2f2'}"/>`);
    out.push(`<text x="${m.left - 6}" y="${(+y + 4).toFixed(1)}" text-anchor="end">${formatMs(t)}</text>`);
  }
  out.push(`<rect x="${m.left}" y="${m.top}" width="${W - m.left - m.right}" height="${H - m.top - m.bottom}" fill="none" stroke="#888"/>`);
  out.push(`<text x="${(m.left + W - m.right) / 2}" y="${H - 14}" text-anchor="middle">sequence length n (log scale)</text>`);
  out.push(`<text transform="translate(18 ${(m.top + H - m.bottom) / 2}) rotate(-90)" text-anchor="middle">forward + backward time per step (log scale)</text>`);
  // Guides through the first point of the last series (the quadratic baseline).
  const base = series[series.length - 1]?.points[0];
  if (base) {
    const clip = `<clipPath id="plot"><rect x="${m.left}" y="${m.top}" width="${W - m.left - m.right}" height="${H - m.top - m.bottom}"/></clipPath>`;
    out.push(clip);
    for (const [power, label] of [[1, 'O(n)'], [2, 'O(n²)']]) {
      const [n0, t0] = base;
      const t1 = t0 * (xMax / n0) ** power;
      out.push(`<line clip-path="url(#plot)" x1="${px(n0).toFixed(1)}" y1="${py(t0).toFixed(1)}" x2="${px(xMax).toFixed(1)}" y2="${py(t1).toFixed(1)}" stroke="#aaa" stroke-dasharray="5 4"/>`);
      const yl = Math.max(m.top + 10, py(Math.min(t1, yMax)));
      out.push(`<text x="${(px(xMax) - 4).toFixed(1)}" y="${(yl - 4).toFixed(1)}" text-anchor="end" fill="#888">${label} guide</text>`);
    }
  }
  series.forEach((s, i) => {
    const color = COLORS[i % COLORS.length];
    const pts = s.points.map(([n, t]) => `${px(n).toFixed(1)},${py(t).toFixed(1)}`).join(' ');
    out.push(`<polyline points="${pts}" fill="none" stroke="${color}" stroke-width="2.2"/>`);
    for (const [n, t] of s.points) out.push(`<circle cx="${px(n).toFixed(1)}" cy="${py(t).toFixed(1)}" r="3.2" fill="${color}"/>`);
    const ly = m.top + 14 + i * 22;
    out.push(`<line x1="${W - m.right + 14}" y1="${ly}" x2="${W - m.right + 40}" y2="${ly}" stroke="${color}" stroke-width="2.2"/>`);
    out.push(`<text x="${W - m.right + 46}" y="${ly + 4}">${esc(s.name)}</text>`);
  });
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}
