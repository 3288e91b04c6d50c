"""Long-range recall evaluations that need no torchtitan: synthetic recall tasks
(passkey, multi-query associative recall) and passkey needle-in-a-haystack prompts on
the embedded corpus with their scoring. The runners that train and publish are in bench/."""
