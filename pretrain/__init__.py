"""Demonstrations (expert training, Minari/robomimic datasets) and behavior cloning. (Built in issue #3.)"""
