"""Registry cases (see cases.py) for the coupling transforms: name -> factory(features) -> Case."""

CASES: dict = {}
