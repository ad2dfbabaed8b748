-- Every text a run stored an embedding of: its prompts and the annotation sentences `gradcam
-- validate` grounded (the image–sentence maps of phrase grounding).
-- internal
-- param run_id VARCHAR: the run
SELECT label, prompt FROM text_embeddings WHERE run_id = $run_id;
