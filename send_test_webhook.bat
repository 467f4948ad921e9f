@echo off
rem Send a test Push Hook to the running service and show its answer (send_test_webhook.py --help).
rem Double-click it, or run it with options: send_test_webhook.bat --project group/project
rem Keep this file ASCII with CRLF line endings: cmd reads a batch file in the console's code page.
setlocal
chcp 65001 >nul
cd /d "%~dp0" || goto :fail
set PYTHONUTF8=1
if not exist ".venv\Scripts\python.exe" goto :no_venv
".venv\Scripts\python.exe" send_test_webhook.py %*
set result=%errorlevel%
rem Double-clicked (no options): keep the window open to read the answer; run with options, a script goes on.
if "%~1"=="" pause
exit /b %result%

:no_venv
echo .venv is missing: double-click start_server.bat first; it sets everything up.

:fail
echo.
if "%~1"=="" pause
exit /b 1
