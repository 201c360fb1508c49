"""The scheduling domain as the host sees it (entry point ``telemed.domains:scheduling``)."""

from telemed.core.plugins import DomainPlugin

plugin = DomainPlugin(name="scheduling", title_zh="预约挂号", title_en="Scheduling")
