// node --test tests/js/: the page's pure helpers, imported from their own modules.
import { test } from "node:test";
import assert from "node:assert/strict";
import { colorRamp, parseTargets, columnsOf, pointOn, edgePath, GRID } from "../../ltt/widget/static/page/layout.js";
import { repeatedTokens } from "../../ltt/widget/static/page/axes.js";
import { STATE_FIELDS, WRITABLE } from "../../ltt/widget/static/page/schema.js";

test("colorRamp runs from its base colour to the hue", () => {
  assert.deepEqual(colorRamp(0, [47, 111, 223]), [255, 255, 255]);
  assert.deepEqual(colorRamp(1, [47, 111, 223], [17, 20, 24]), [47, 111, 223]);
  assert.deepEqual(colorRamp(0, [47, 111, 223], [17, 20, 24]), [17, 20, 24]);
  assert.deepEqual(colorRamp(0.5, [100, 100, 100], [0, 0, 0]), [50, 50, 50]);
});

test("repeatedTokens gives the positions of tokens that occur twice or more", () => {
  assert.deepEqual([...repeatedTokens([" Eleanor", " met", " Eleanor", "."])], [0, 2]);
  assert.equal(repeatedTokens(["a", "b"]).size, 0);
});

test("parseTargets resolves negative positions and refuses bad ones", () => {
  assert.deepEqual(parseTargets("-1, 2", 5), [2, 4]);
  assert.throws(() => parseTargets("7", 5), /outside the 5 tokens/);
  assert.throws(() => parseTargets("x", 5), /not a token position/);
});

test("pointOn ends where the edge's path ends", () => {
  const a = [GRID.col * 0.5, 100], b = [GRID.col * 3.5, 40];
  const e = { kind: "attention" };
  assert.deepEqual(pointOn(e, a, b, 0), a);
  assert.deepEqual(pointOn(e, a, b, 1), b);
  assert.ok(edgePath("attention", a, b).startsWith("M18 100C"));
  assert.equal(columnsOf(4, new Set([1]), true).w[1], 1);
});

test("the schema's writable fields are what the page may set", () => {
  assert.deepEqual(WRITABLE, STATE_FIELDS.filter((f) => f.writable).map((f) => f.name));
  assert.ok(WRITABLE.includes("threshold") && !WRITABLE.includes("graph"));
});
