"""Grounded removal: removal and reversed add pairs from any photo collection, found by models.

PhraseCut's hand-drawn regions give about 85k removal tasks; SEED-Data-Edit and X2Edit make theirs from
any photos by finding the objects themselves. This generator does the same, per batch of photos:

1. :mod:`~ieiw.pipelines.grounded.photos`: the photos stream from a folder, or from what img2dataset
   wrote (WebDataset shards or Parquet), each with its URL, caption and license as provenance;
2. :mod:`~ieiw.pipelines.grounded.tagging`: CLIP zero-shot over a vocabulary names what may be removed;
3. :mod:`~ieiw.pipelines.grounded.grounding`: OWLv2 (or Grounding DINO) grounds each name to boxes,
   batched across photos;
4. :mod:`~ieiw.pipelines.grounded.segmenting`: SAM draws each object's mask from its box;
5. :mod:`~ieiw.pipelines.grounded.gates`: the gates, each a counted drop reason (:mod:`.chain` runs them);
6. LaMa inpaints the dilated mask, the object verifier checks the object is gone, and
   :mod:`~ieiw.pipelines.grounded.pairs` makes the remove and add pairs with stable keys, their
   instructions from the templates or an LLM (:mod:`~ieiw.pipelines.grounded.wording`); with
   ``sessions``, :mod:`~ieiw.pipelines.grounded.sessions` removes a photo's objects one after another
   (multi-turn sessions, as PhraseCut's: :mod:`ieiw.pipelines.removal_sessions`).

:class:`~ieiw.pipelines.grounded.stage.GroundedRemovalStage` is the generator on the stage contract.
"""
