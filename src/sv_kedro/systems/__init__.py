"""Speaker-verification training systems: what a training worker builds from parameters.

``tasks`` turns a batch into a loss (CE / AAM / CTC / pair BCE, optionally with the loss
gate, label correction and L2-SP); ``loaders`` builds the training batches from a manifest;
``validation`` measures EER on validation pairs during training; ``runner`` assembles a
``TrainingJob`` and launches it. Everything here is plain data in, plain data out, so it
runs unchanged inside DDP workers.
"""
