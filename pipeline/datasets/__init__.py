"""Datasets: the manifest contract and command line, AVE, VEGAS, labelled folders, cards, splits, demo videos."""
