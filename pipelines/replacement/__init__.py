"""Object replacement, the paper's second IEIW source.

Regions (SA-1B, Open Images V7, or proposed by SAM) build an object database of CLIP embeddings;
for a chosen region the most similar other object is retrieved with FAISS and painted into the
region (Paint-by-Example, or seamless cloning without weights); captions and an instruction
(LLM or templates) complete the pair. Modules:

- :mod:`.records`, :mod:`.sa1b`, :mod:`.openimages`, :mod:`.folder`: source records and readers
- :mod:`.sam`, :mod:`.proposals`: region proposals for images without masks
- :mod:`.selection`, :mod:`.crops`: which regions are objects a person would name, and their crops
- :mod:`.objects`, :mod:`.database`, :mod:`.index`, :mod:`.retrieval`: the object database (a batch of
  images into objects), its FAISS index and retrieval
- :mod:`.painting`, :mod:`.classical`, :mod:`.paint_by_example`: generation backends
- :mod:`.captions`, :mod:`.labels`, :mod:`.wording`: captions, class names and instructions
- :mod:`.pairs`: a batch of images into replace pairs, and what their keys hold
- :mod:`.stage`: the object database and the pairs as stages of the one contract; :mod:`.config`: the
  ``replacement:`` section
"""
