/**
 * A uPlot line chart over step. `data` is column-wise ([x, y1, y2, …]); call
 * `chart.redraw()` through the `version` prop changing: the component hands uPlot the
 * same arrays again (setData), at most once per animation frame, so a stream of events
 * costs one redraw per frame, not one per event.
 *
 * For tests and assistive tech the figure carries what it shows: a caption, and
 * `data-count`, `data-first`, `data-last` and `data-contiguous` on the element.
 */
import { useEffect, useRef } from "react";
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";

export interface SeriesSpec {
  label: string;
  color: string;
  /** A second y axis on the right (e.g. amplification next to a norm). */
  right?: boolean;
}

interface Props {
  title: string;
  id: string;
  x: number[];
  ys: number[][];
  series: SeriesSpec[];
  version: number;
  /** Expected step between points, for `data-contiguous` (0 = don't check). */
  interval?: number;
  height?: number;
}

function contiguous(x: number[], interval: number): boolean {
  for (let i = 1; i < x.length; i++) if (x[i] - x[i - 1] !== interval) return false;
  return true;
}

export function Chart({ title, id, x, ys, series, version, interval = 0, height = 220 }: Props) {
  const host = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  const frame = useRef<number | null>(null);

  useEffect(() => {
    const el = host.current;
    if (!el) return;
    const hasRight = series.some((s) => s.right);
    const opts: uPlot.Options = {
      width: Math.max(320, el.clientWidth),
      height,
      legend: { show: true },
      cursor: { drag: { x: true, y: false } },
      scales: { x: { time: false } },
      axes: [
        { label: "step" },
        { scale: "y" },
        ...(hasRight ? [{ scale: "y2", side: 1 as const, grid: { show: false } }] : []),
      ],
      series: [
        { label: "step" },
        ...series.map((s) => ({ label: s.label, stroke: s.color, width: 1.5, scale: s.right ? "y2" : "y", points: { show: false } })),
      ],
    };
    const u = new uPlot(opts, [x, ...ys] as uPlot.AlignedData, el);
    plot.current = u;
    const ro = new ResizeObserver(() => u.setSize({ width: Math.max(320, el.clientWidth), height }));
    ro.observe(el);
    return () => {
      ro.disconnect();
      u.destroy();
      plot.current = null;
    };
    // The series layout is fixed per chart; data flows through `version`.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [height, series.length]);

  useEffect(() => {
    if (frame.current !== null) return;
    frame.current = requestAnimationFrame(() => {
      frame.current = null;
      plot.current?.setData([x, ...ys] as uPlot.AlignedData);
    });
  }, [version, x, ys]);
  useEffect(() => () => {
    if (frame.current !== null) cancelAnimationFrame(frame.current);
  }, []);

  const last = x.length ? x[x.length - 1] : null;
  return (
    <figure
      className="chart"
      id={id}
      data-count={x.length}
      data-first={x.length ? x[0] : ""}
      data-last={last ?? ""}
      data-contiguous={interval ? String(contiguous(x, interval)) : ""}
    >
      <figcaption>
        {title}
        <span className="muted">
          {" "}
          — {x.length} points{last !== null ? `, last step ${last}` : ""}
        </span>
      </figcaption>
      <div ref={host} className="chart-canvas" role="img" aria-label={`${title} chart by step`} />
    </figure>
  );
}
