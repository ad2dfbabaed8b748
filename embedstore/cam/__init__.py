"""Grad-CAM of stored runs, one concept per module:

- `layouts`: where an image tower is hooked (the tower kinds, default and candidate layers,
  dotted-path layers, ViT tokens back on the patch grid);
- `subject`: a stored run rebuilt into the module whose output a map explains (its model, its
  scorer on top, its probabilities);
- `methods`: computing maps, the saliency methods keyed by `choices.CamMethod`, hooks held by a
  context manager;
- `faithfulness`: deletion and insertion curves;
- `sanity`: the model-randomisation check;
- `workspace`: one run ready for maps (images at the model's input, the hook layer or its
  selection, maps in batches, provenance);
- `run`: the two entry points, `render_maps` (`embedstore gradcam`) and `validate`
  (`embedstore gradcam validate`).

The localisation figures against annotations live in `embedstore.analyses.localisation`; the
overlays and grid figures in `embedstore.rendering.overlays`. Importing this package loads no
model library: torch and pytorch-grad-cam are imported when a map is computed.
"""
