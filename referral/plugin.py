"""The referral domain as the host sees it (entry point ``telemed.domains:referral``)."""

from telemed.core.plugins import DomainPlugin

plugin = DomainPlugin(name="referral", title_zh="双向转诊", title_en="Referrals")
