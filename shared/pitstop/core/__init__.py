"""Pure core: the nouns, the state machine, the judge, message parsing. No I/O."""
