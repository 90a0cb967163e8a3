// GENERATED from ltt/widget/state.py by `python -m ltt.widget.bundle`: do not edit.
// The widget's synced fields, their kinds and defaults, and which the page may write.

export const STATE_FIELDS = [
  {"name": "graph", "kind": "dict", "default": {}, "writable": false},
  {"name": "threshold", "kind": "float", "default": 0.04, "writable": true},
  {"name": "renormalize", "kind": "bool", "default": true, "writable": true},
  {"name": "normalize", "kind": "bool", "default": true, "writable": true},
  {"name": "targets", "kind": "list[int]", "default": [], "writable": true},
  {"name": "selection", "kind": "dict", "default": {}, "writable": true},
  {"name": "panel", "kind": "dict", "default": {}, "writable": false},
  {"name": "panel_maps", "kind": "bytes", "default": "", "writable": false},
  {"name": "panel_maps_shape", "kind": "list[int]", "default": [], "writable": false},
  {"name": "prompts", "kind": "list[str]", "default": [], "writable": false},
  {"name": "prompt_index", "kind": "int", "default": 0, "writable": true},
  {"name": "model_info", "kind": "dict", "default": {}, "writable": false},
  {"name": "status", "kind": "str", "default": "", "writable": false},
  {"name": "error", "kind": "str", "default": "", "writable": false},
  {"name": "notice", "kind": "str", "default": "", "writable": false},
  {"name": "live", "kind": "bool", "default": true, "writable": false},
  {"name": "marks", "kind": "dict", "default": {}, "writable": false},
  {"name": "slider", "kind": "list[float]", "default": [0.01, 0.1], "writable": false},
  {"name": "faithfulness", "kind": "str", "default": "", "writable": false},
  {"name": "faithfulness_state", "kind": "str", "default": "", "writable": false},
  {"name": "faithfulness_for", "kind": "list[int]", "default": [], "writable": false},
  {"name": "outputs", "kind": "list[dict]", "default": [], "writable": false},
  {"name": "counterfactual", "kind": "str", "default": "", "writable": true},
];

/** The fields the page may set (what render() commits). */
export const WRITABLE = STATE_FIELDS.filter((f) => f.writable).map((f) => f.name);
