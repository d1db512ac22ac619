"""Registry cases (see cases.py) for the support transforms: name -> factory(features) -> Case."""

CASES: dict = {}
