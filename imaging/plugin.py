"""The imaging domain as the host sees it (entry point ``telemed.domains:imaging``)."""

from telemed.core.plugins import DomainPlugin

plugin = DomainPlugin(name="imaging", title_zh="远程影像", title_en="Imaging")
