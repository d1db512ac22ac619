"""Registry cases (see cases.py) for the layers transforms: name -> factory(features) -> Case."""

CASES: dict = {}
