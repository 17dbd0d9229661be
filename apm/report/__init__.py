"""apm.report"""
