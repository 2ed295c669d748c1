"""The paper's domain concepts shared by several stages, each in one home: the RULE rewards (rewards.py), the refusal
detector (refusal.py), the prompt forms (prompts.py) and the plug-in that hands them to the RL library by name
(plugin.py). Not part of the library: it may import the library and the data layer, never the reverse.
"""
