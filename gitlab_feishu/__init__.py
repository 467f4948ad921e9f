"""GitLab push webhooks to Feishu (Lark) cards, sent by bot DM to each project's owners."""
