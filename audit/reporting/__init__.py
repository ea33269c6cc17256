"""What the report and the dashboard share: loading run directories, formatting, figures."""
