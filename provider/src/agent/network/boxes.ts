/**
 * Set algebra on boxes: products of inclusive integer intervals, one per
 * dimension (destination address x port, or destination x ICMP type x code).
 *
 * The kernel's set type for concatenated intervals (pipapo) rejects an element
 * that overlaps one it already holds, while security group rules overlap
 * freely: across groups, within a group, and with duplicates. So the renderer
 * turns the union of a container's rules into disjoint boxes first.
 */
import type { Interval } from "../../common/asg";

export type Box = Interval[];

function mergeIntervals(intervals: Interval[]): Interval[] {
  const sorted = [...intervals].sort((a, b) => a.first - b.first);
  const merged: Interval[] = [];
  for (const interval of sorted) {
    const last = merged[merged.length - 1];
    if (last && interval.first <= last.last + 1) {
      last.last = Math.max(last.last, interval.last);
    } else {
      merged.push({ ...interval });
    }
  }
  return merged;
}

function boxesKey(boxes: Box[]): string {
  return boxes.map((box) => box.map((interval) => `${interval.first}-${interval.last}`).join("x")).join(",");
}

function overlaps(a: Box, b: Box): boolean {
  return a.every((interval, dimension) => interval.first <= b[dimension].last && b[dimension].first <= interval.last);
}

function compareBoxes(a: Box, b: Box): number {
  for (let dimension = 0; dimension < a.length; dimension++) {
    const difference = a[dimension].first - b[dimension].first || a[dimension].last - b[dimension].last;
    if (difference !== 0) return difference;
  }
  return 0;
}

/** Groups boxes into clusters that overlap or touch each other, so that a box alone stays whole. */
function clusters(boxes: Box[]): Box[][] {
  const parent = boxes.map((_, index) => index);
  const root = (index: number): number => (parent[index] === index ? index : (parent[index] = root(parent[index])));
  // Widening by one merges touching boxes too, so that "80" and "81" become "80-81".
  const widened = boxes.map((box) => box.map((interval) => ({ first: interval.first - 1, last: interval.last + 1 })));
  const order = boxes.map((_, index) => index).sort((a, b) => boxes[a][0].first - boxes[b][0].first);
  const active: number[] = [];
  for (const index of order) {
    const start = widened[index][0].first;
    for (let position = active.length - 1; position >= 0; position--) {
      if (widened[active[position]][0].last < start) active.splice(position, 1);
    }
    for (const other of active) {
      if (overlaps(widened[index], boxes[other])) parent[root(index)] = root(other);
    }
    active.push(index);
  }
  const groups = new Map<number, Box[]>();
  boxes.forEach((box, index) => groups.set(root(index), [...(groups.get(root(index)) ?? []), box]));
  return [...groups.values()];
}

/**
 * Returns disjoint boxes whose union is exactly the union of the given boxes,
 * sorted. Boxes that neither overlap nor touch another stay as they are. A
 * sweep along the first dimension cuts each cluster of overlapping boxes, and
 * merges neighbours whose remaining dimensions are equal.
 */
export function disjointUnion(boxes: Box[]): Box[] {
  if (boxes.length === 0) return [];
  if (boxes[0].length === 1) return sweep(boxes);
  const result: Box[] = [];
  for (const cluster of clusters(boxes)) {
    if (cluster.length === 1) result.push(cluster[0].map((interval) => ({ ...interval })));
    else result.push(...sweep(cluster));
  }
  return result.sort(compareBoxes);
}

function sweep(boxes: Box[]): Box[] {
  if (boxes[0].length === 1) return mergeIntervals(boxes.map((box) => box[0])).map((interval) => [interval]);

  const starting = new Map<number, Box[]>();
  const ending = new Map<number, Box[]>();
  for (const box of boxes) {
    const { first, last } = box[0];
    starting.set(first, [...(starting.get(first) ?? []), box]);
    ending.set(last + 1, [...(ending.get(last + 1) ?? []), box]);
  }
  const boundaries = [...new Set([...starting.keys(), ...ending.keys()])].sort((a, b) => a - b);

  const result: Box[] = [];
  let previous: { segment: Interval; rest: Box[]; key: string; emitted: Box[] } | undefined;
  const active = new Set<Box>();
  for (let index = 0; index < boundaries.length - 1; index++) {
    const boundary = boundaries[index];
    for (const box of ending.get(boundary) ?? []) active.delete(box);
    for (const box of starting.get(boundary) ?? []) active.add(box);
    if (active.size === 0) {
      previous = undefined;
      continue;
    }
    const segment = { first: boundary, last: boundaries[index + 1] - 1 };
    const rest = disjointUnion([...active].map((box) => box.slice(1)));
    const key = boxesKey(rest);
    if (previous && previous.key === key && previous.segment.last + 1 === segment.first) {
      // Same remaining dimensions as the segment before: widen the boxes already emitted.
      previous.segment.last = segment.last;
      for (const box of previous.emitted) box[0].last = segment.last;
      continue;
    }
    const emitted = rest.map((restBox) => [{ ...segment }, ...restBox]);
    result.push(...emitted);
    previous = { segment: { ...segment }, rest, key, emitted };
  }
  return result;
}

/** Returns whether the union of `cover` contains every point of `box`. */
export function covers(cover: Box[], box: Box): boolean {
  const relevant = cover.filter((candidate) => candidate.every((interval, dimension) => interval.first <= box[dimension].last && interval.last >= box[dimension].first));
  if (relevant.length === 0) return false;
  const target = box[0];
  if (box.length === 1) {
    let reached = target.first;
    for (const interval of mergeIntervals(relevant.map((candidate) => candidate[0]))) {
      if (interval.first > reached) return false;
      if (interval.last >= target.last) return true;
      reached = interval.last + 1;
    }
    return false;
  }
  // Cut the first dimension at every boundary of the candidates. Each piece must be covered in the other dimensions.
  const cuts = new Set<number>([target.first]);
  for (const candidate of relevant) {
    if (candidate[0].first > target.first && candidate[0].first <= target.last) cuts.add(candidate[0].first);
    if (candidate[0].last + 1 > target.first && candidate[0].last + 1 <= target.last) cuts.add(candidate[0].last + 1);
  }
  const starts = [...cuts].sort((a, b) => a - b);
  for (let index = 0; index < starts.length; index++) {
    const first = starts[index];
    const last = index + 1 < starts.length ? starts[index + 1] - 1 : target.last;
    const over = relevant.filter((candidate) => candidate[0].first <= first && candidate[0].last >= last).map((candidate) => candidate.slice(1));
    if (!covers(over, box.slice(1))) return false;
  }
  return true;
}
