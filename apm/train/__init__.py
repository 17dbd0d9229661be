"""apm.train"""
